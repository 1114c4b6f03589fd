// relu_module's torch operators (relu_module::relu, relu_, relu.out, relu_backward,
// relu_backward.out), as pytorch/extension-cpp defines its own: schemas that declare what they
// write (Tensor(a!)), a CPU kernel on the tensors' data pointers, and the ADInplaceOrView
// kernel that bumps the version counter of what was written. The fake kernels, autograd and the
// vmap rules are registered in relu_module/torch.py (torch.library), as extension-cpp's ops.py.
//
// Output allocation, shape and dtype checks, resizing of out= and the overlap checks are
// torch's own TensorIterator, configured as torch.relu configures it: so sizes, strides
// (size-1 dimensions included), errors and warnings are torch.relu's. Only the loop is ours.
#include <ATen/Parallel.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/TensorIterator.h>
#include <ATen/ops/clamp_min.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/threshold_backward.h>
#include <Python.h>
#include <c10/core/CPUAllocator.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/jit/frontend/tracer.h>
#include <torch/library.h>

#include <array>
#include <cstddef>
#include <vector>

#include "relu_api.hpp"

namespace {

const relu_kernel::Api* g_api = nullptr;  // set once by PyInit__torch_ops, before any call

// torch.relu's TensorIterator: one output (allocated if undefined), one input, same dtype.
at::TensorIterator unary_iter(const at::Tensor& out, const at::Tensor& x) {
    return at::TensorIteratorConfig().add_output(out).add_const_input(x).build();
}

at::TensorIterator binary_iter(const at::Tensor& out, const at::Tensor& g, const at::Tensor& y) {
    return at::TensorIteratorConfig().add_output(out).add_const_input(g).add_const_input(y).build();
}

bool kernel_dtype(const at::Tensor& t) {
    return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble;
}

// Says a degraded pool's warning through torch's warning handler (a Python RuntimeWarning
// when called from Python, raised once the op has returned and bumped its version counters).
void warn_if_pool_degraded(std::size_t out_bytes) {
    std::array<char, 512> buf{};
    if (g_api->pool_warning(out_bytes, buf.data(), buf.size()) != 0) TORCH_WARN(buf.data());
}

// A kernel view: the data pointer and the strides in bytes (torch keeps them in elements).
struct Strided {
    std::vector<std::ptrdiff_t> bytes;
    relu_kernel::View view(const at::Tensor& t) {
        bytes.assign(t.strides().begin(), t.strides().end());
        for (auto& s : bytes) s *= static_cast<std::ptrdiff_t>(t.element_size());
        if (bytes.empty()) bytes.push_back(0);
        return {static_cast<char*>(t.data_ptr()), bytes.data()};
    }
};

// True if every tensor walks its memory in the same order with no gaps: one flat loop.
bool same_dense_layout(const at::Tensor& a, const at::Tensor& b) {
    return a.is_non_overlapping_and_dense() && b.is_non_overlapping_and_dense() &&
           (a.strides() == b.strides() || (a.is_contiguous() && b.is_contiguous()));
}

std::vector<std::ptrdiff_t> shape_of(const at::Tensor& t) {
    std::vector<std::ptrdiff_t> s(t.sizes().begin(), t.sizes().end());
    if (s.empty()) s.push_back(1);
    return s;
}

// A dense job on torch's intra-op threads, split where torch splits its own elementwise ops
// (at::internal::GRAIN_SIZE elements, one contiguous share per thread): torch's OpenMP workers
// spin for milliseconds after each region, so a second pool beside them (relu_module's, which
// the array path uses) would find its worker descheduled and run the call alone, 1.5-2.4x slower
// than torch at 1e5-1e6 elements when calls alternate with torch's ops (measured, AVX-512 EPYC).
// `share(begin, end)` computes elements [begin, end).
template <class Share>
void dense_parallel(std::size_t n, const Share& share) {
    at::parallel_for(0, static_cast<int64_t>(n), at::internal::GRAIN_SIZE,
                     [&](int64_t b, int64_t e) {
                         share(static_cast<std::size_t>(b), static_cast<std::size_t>(e - b));
                     });
}

template <class T>
void relu_loop(const at::Tensor& x, const at::Tensor& y) {
    const std::size_t n = static_cast<std::size_t>(x.numel());
    constexpr bool f32 = std::is_same_v<T, float>;
    if (same_dense_layout(x, y)) {
        auto* xp = x.const_data_ptr<T>();
        auto* yp = y.mutable_data_ptr<T>();
        const relu_kernel::JobEnv env = g_api->job_env(n * sizeof(T), xp == yp);
        dense_parallel(n, [&](std::size_t b, std::size_t m) {
            if constexpr (f32)
                g_api->relu_part_f32(xp + b, yp + b, m, env);
            else
                g_api->relu_part_f64(xp + b, yp + b, m, env);
        });
        return;
    }
    warn_if_pool_degraded(static_cast<std::size_t>(y.nbytes()));  // strided jobs use the pool
    Strided xs, ys;
    const std::vector<std::ptrdiff_t> shape = shape_of(x);
    const int nd = static_cast<int>(shape.size());
    if constexpr (f32)
        g_api->relu_strided_f32(nd, shape.data(), xs.view(x), ys.view(y));
    else
        g_api->relu_strided_f64(nd, shape.data(), xs.view(x), ys.view(y));
}

template <class T>
void backward_loop(const at::Tensor& g, const at::Tensor& y, const at::Tensor& out) {
    const std::size_t n = static_cast<std::size_t>(y.numel());
    constexpr bool f32 = std::is_same_v<T, float>;
    if (same_dense_layout(g, out) && same_dense_layout(y, out)) {
        auto* gp = g.const_data_ptr<T>();
        auto* yp = y.const_data_ptr<T>();
        auto* op = out.mutable_data_ptr<T>();
        // backward has no non-temporal variant: only the caller's MXCSR matters
        const relu_kernel::JobEnv env = g_api->job_env(n * sizeof(T), /*in_place=*/true);
        dense_parallel(n, [&](std::size_t b, std::size_t m) {
            if constexpr (f32)
                g_api->backward_part_f32(gp + b, yp + b, op + b, m, env);
            else
                g_api->backward_part_f64(gp + b, yp + b, op + b, m, env);
        });
        return;
    }
    warn_if_pool_degraded(static_cast<std::size_t>(out.nbytes()));  // strided jobs use the pool
    Strided gs, ys, os;
    const std::vector<std::ptrdiff_t> shape = shape_of(y);
    const int nd = static_cast<int>(shape.size());
    if constexpr (f32)
        g_api->backward_strided_f32(nd, shape.data(), gs.view(g), ys.view(y), os.view(out));
    else
        g_api->backward_strided_f64(nd, shape.data(), gs.view(g), ys.view(y), os.view(out));
}

// y = relu(x) into y, which TensorIterator has allocated or checked (shape, dtype, overlap).
void relu_into(const at::Tensor& x, const at::Tensor& y) {
    if (x.numel() == 0) return;
    if (x.scalar_type() == at::kFloat)
        relu_loop<float>(x, y);
    else
        relu_loop<double>(x, y);
}

struct CachedBlock {
    void* ptr;
    std::size_t capacity;
};

void release_block(void* ctx) {
    auto* block = static_cast<CachedBlock*>(ctx);
    g_api->release_buffer(block->ptr, block->capacity);
    delete block;
}

// A large output from the kernels' block cache (huge pages, reused: a fresh 40 MB output
// otherwise costs more in page faults than the kernel takes), laid out as TensorIterator lays
// out the output of a contiguous input: contiguous. Its storage stays resizable (a resize
// moves it to torch's allocator), as every torch output's is. Undefined if not applicable.
at::Tensor cached_output(const at::Tensor& x) {
    const std::size_t nbytes = x.nbytes();
    if (nbytes < g_api->cache_min_bytes || !x.is_contiguous()) return {};
    std::size_t capacity = 0;
    void* p = g_api->acquire_buffer(nbytes, &capacity);
    if (p == nullptr) return {};
    c10::DataPtr data(p, new CachedBlock{p, capacity}, &release_block, x.device());
    c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data),
                         c10::GetCPUAllocator(), /*resizable=*/true);
    return at::empty({0}, x.options())
        .set_(storage, 0, x.sizes(), c10::contiguous_strides(x.sizes()));
}

// Other dtypes (integers, float16, bfloat16) have no kernel here: torch's own ops compute
// them, with the same semantics.
at::Tensor relu_cpu(const at::Tensor& x) {
    if (!kernel_dtype(x)) return at::relu(x);
    at::Tensor y = cached_output(x);
    if (!y.defined()) y = unary_iter(at::Tensor(), x).output(0);
    relu_into(x, y);
    return y;
}

void relu_inplace_cpu(at::Tensor& x) {
    if (!kernel_dtype(x)) {
        at::relu_(x);
        return;
    }
    unary_iter(x, x);  // torch.relu_'s checks: one memory location per element
    relu_into(x, x);
}

void relu_out_cpu(const at::Tensor& x, at::Tensor& out) {
    if (!kernel_dtype(x) || !kernel_dtype(out)) {
        at::clamp_min_out(out, x, 0);
        return;
    }
    unary_iter(out, x);  // resizes out as clamp_min(out=) does; checks dtype and overlap
    // out may be x itself (same view); TensorIterator has refused a partial overlap.
    relu_into(x, out);
}

void backward_into(const at::Tensor& g, const at::Tensor& y, const at::Tensor& out) {
    if (y.numel() == 0) return;
    if (y.scalar_type() == at::kFloat)
        backward_loop<float>(g, y, out);
    else
        backward_loop<double>(g, y, out);
}

bool backward_kernel_ok(const at::Tensor& g, const at::Tensor& y) {
    return kernel_dtype(y) && g.scalar_type() == y.scalar_type() && g.sizes() == y.sizes();
}

// threshold_backward(grad, result, 0): grad where result > 0 (or NaN), else +0.
at::Tensor relu_backward_cpu(const at::Tensor& g, const at::Tensor& y) {
    if (!backward_kernel_ok(g, y)) return at::threshold_backward(g, y, 0);
    at::TensorIterator iter = binary_iter(at::Tensor(), g, y);
    const at::Tensor& out = iter.output(0);
    backward_into(g, y, out);
    return out;
}

void relu_backward_out_cpu(const at::Tensor& g, const at::Tensor& y, at::Tensor& out) {
    if (!backward_kernel_ok(g, y) || out.scalar_type() != y.scalar_type()) {
        at::threshold_backward_out(out, g, y, 0);
        return;
    }
    binary_iter(out, g, y);
    backward_into(g, y, out);
}

}  // namespace

TORCH_LIBRARY(relu_module, m) {
    const std::vector<at::Tag> pointwise{at::Tag::pointwise};
    m.def("relu(Tensor self) -> Tensor", pointwise);
    // Writers return nothing, as extension-cpp's mymuladd_out: functionalisation (torch.func,
    // torch.compile, torch.export) takes a custom op's write only without an aliased output.
    m.def("relu_(Tensor(a!) self) -> ()", pointwise);
    m.def("relu.out(Tensor self, *, Tensor(a!) out) -> ()", pointwise);
    m.def("relu_backward(Tensor grad_output, Tensor result) -> Tensor", pointwise);
    m.def("relu_backward.out(Tensor grad_output, Tensor result, *, Tensor(a!) out) -> ()",
          pointwise);
}

TORCH_LIBRARY_IMPL(relu_module, CPU, m) {
    m.impl("relu", &relu_cpu);
    m.impl("relu_", &relu_inplace_cpu);
    m.impl("relu.out", &relu_out_cpu);
    m.impl("relu_backward", &relu_backward_cpu);
    m.impl("relu_backward.out", &relu_backward_out_cpu);
}

namespace {

// ---- autograd -----------------------------------------------------------------------------
//
// In C++ so that a call autograd need not record (no tensor requires grad, none is a dual
// tensor: the common inference and no_grad case) costs one redispatch, as torch's own
// kernels do. A call it must record goes to relu_module.torch's Python implementation
// (autograd.Function with backward and jvp, functorch-aware), set by set_recorders().

enum Recorder { kRelu, kReluInplace, kBackward, kRecorders };
PyObject* g_recorders[kRecorders] = {};

bool recording(std::initializer_list<const at::Tensor*> ts) {
    const bool grad = at::GradMode::is_enabled();
    const bool fw = c10::AutogradState::get_tls_state().get_fw_grad_mode();
    for (const at::Tensor* t : ts) {
        if ((grad && t->requires_grad()) || (fw && t->_fw_grad(0).defined())) return true;
    }
    return false;
}

// Calls the Python recorder with the tensors; a Python exception passes through unchanged.
at::Tensor record(Recorder which, std::initializer_list<const at::Tensor*> ts) {
    TORCH_CHECK(g_recorders[which] != nullptr,
                "relu_module: autograd for the relu_module operators is registered by "
                "`import relu_module.torch`; import it before differentiating through them");
    pybind11::gil_scoped_acquire gil;
    PyObject* args = PyTuple_New(static_cast<Py_ssize_t>(ts.size()));
    Py_ssize_t i = 0;
    for (const at::Tensor* t : ts) PyTuple_SET_ITEM(args, i++, THPVariable_Wrap(*t));
    PyObject* result = PyObject_Call(g_recorders[which], args, nullptr);
    Py_DECREF(args);
    if (result == nullptr) {
        python_error err;
        err.persist();
        throw std::move(err);
    }
    at::Tensor out = THPVariable_Check(result) ? THPVariable_Unpack(result) : at::Tensor();
    Py_DECREF(result);
    return out;
}

template <class Sig>
c10::TypedOperatorHandle<Sig> handle(const char* name, const char* overload) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, overload).typed<Sig>();
}

at::Tensor relu_autograd(c10::DispatchKeySet ks, const at::Tensor& x) {
    if (recording({&x})) return record(kRelu, {&x});
    static const auto op = handle<at::Tensor(const at::Tensor&)>("relu_module::relu", "");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(ks & c10::after_ADInplaceOrView_keyset, x);
}

void relu_inplace_autograd(c10::DispatchKeySet ks, at::Tensor& x) {
    if (recording({&x})) {
        record(kReluInplace, {&x});
        return;
    }
    static const auto op = handle<void(at::Tensor&)>("relu_module::relu_", "");
    at::AutoDispatchBelowAutograd guard;  // ADInplaceOrView still runs: it bumps the version
    op.redispatch(ks & c10::after_autograd_keyset, x);
}

at::Tensor backward_autograd(c10::DispatchKeySet ks, const at::Tensor& g, const at::Tensor& y) {
    if (recording({&g, &y})) return record(kBackward, {&g, &y});
    static const auto op =
        handle<at::Tensor(const at::Tensor&, const at::Tensor&)>("relu_module::relu_backward", "");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.redispatch(ks & c10::after_ADInplaceOrView_keyset, g, y);
}

// torch's words for every out= op whose arguments require grad.
void refuse_out_with_grad(const char* name, std::initializer_list<const at::Tensor*> ts) {
    if (!at::GradMode::is_enabled()) return;
    for (const at::Tensor* t : ts) {
        TORCH_CHECK(!t->requires_grad(), name,
                    "(): functions with out=... arguments don't support automatic "
                    "differentiation, but one of the arguments requires grad.");
    }
}

void relu_out_autograd(c10::DispatchKeySet ks, const at::Tensor& x, at::Tensor& out) {
    refuse_out_with_grad("relu", {&x, &out});
    static const auto op = handle<void(const at::Tensor&, at::Tensor&)>("relu_module::relu", "out");
    at::AutoDispatchBelowAutograd guard;
    op.redispatch(ks & c10::after_autograd_keyset, x, out);
}

void backward_out_autograd(c10::DispatchKeySet ks, const at::Tensor& g, const at::Tensor& y,
                           at::Tensor& out) {
    refuse_out_with_grad("relu_backward", {&g, &y, &out});
    static const auto op = handle<void(const at::Tensor&, const at::Tensor&, at::Tensor&)>(
        "relu_module::relu_backward", "out");
    at::AutoDispatchBelowAutograd guard;
    op.redispatch(ks & c10::after_autograd_keyset, g, y, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_module, Autograd, m) {
    m.impl("relu", &relu_autograd);
    m.impl("relu_", &relu_inplace_autograd);
    m.impl("relu_backward", &backward_autograd);
    m.impl("relu.out", &relu_out_autograd);
    m.impl("relu_backward.out", &backward_out_autograd);
}

namespace {

// What every torch in-place and out= op does once it has written: bump the version counter of
// each tensor the schema says is written (Tensor(a!)), so autograd detects a write into a saved
// tensor, and an inference tensor written outside inference mode raises torch's error.
void bump_written(const c10::OperatorHandle& op, c10::DispatchKeySet ks, torch::jit::Stack* stack) {
    const auto& args = op.schema().arguments();
    const std::size_t first = stack->size() - args.size();
    std::vector<at::Tensor> written;
    for (std::size_t i = 0; i < args.size(); ++i) {
        const c10::AliasInfo* alias = args[i].alias_info();
        if (alias != nullptr && alias->isWrite()) written.push_back((*stack)[first + i].toTensor());
    }
    {
        at::AutoDispatchBelowADInplaceOrView guard;
        op.redispatchBoxed(ks & c10::after_ADInplaceOrView_keyset, stack);
    }
    for (const at::Tensor& t : written) t.unsafeGetTensorImpl()->bump_version();
}

}  // namespace

TORCH_LIBRARY_IMPL(relu_module, ADInplaceOrView, m) {
    m.impl("relu_", torch::CppFunction::makeFromBoxedFunction<&bump_written>());
    m.impl("relu.out", torch::CppFunction::makeFromBoxedFunction<&bump_written>());
    m.impl("relu_backward.out", torch::CppFunction::makeFromBoxedFunction<&bump_written>());
}

namespace {

// set_recorders(relu, relu_, relu_backward): the Python implementations of the calls autograd
// must record. Kept for the life of the process, as the library's registrations are.
PyObject* set_recorders(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
    if (nargs != kRecorders) {
        PyErr_SetString(PyExc_TypeError, "set_recorders takes relu, relu_ and relu_backward");
        return nullptr;
    }
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        Py_INCREF(args[i]);
        Py_XSETREF(g_recorders[i], args[i]);
    }
    Py_RETURN_NONE;
}

// ---- the eager fast path ------------------------------------------------------------------
//
// relu(x), relu_(x), relu_out(x, out): the operators called through the dispatcher from C, as
// torch's generated bindings call theirs. torch.ops' Python call (OpOverload.__call__, boxed
// arguments) costs ~1 us more per call. The dispatcher still sees every call: autograd,
// functorch, dispatch modes (fake tensors, make_fx, functionalisation), the jit tracer.
// Dynamo cannot trace a C function: relu_module.torch calls these only outside torch.compile.

// Whether the fast path may take a call: every argument a plain Tensor (a subclass has its
// __torch_function__ to run), no TorchFunctionMode, and (for a write) no jit trace, which
// follows writes only through aten ops. Otherwise it returns NotImplemented and the caller
// takes torch.ops' Python call.
bool plain(PyObject* const* args, Py_ssize_t nargs, Py_ssize_t want, bool writes) {
    if (nargs != want || at::impl::torch_function_mode_enabled()) return false;
    if (writes && torch::jit::tracer::isTracing()) return false;
    for (Py_ssize_t i = 0; i < nargs; ++i) {
        if (!THPVariable_CheckExact(args[i])) return false;
    }
    return true;
}

PyObject* fast_relu(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    if (!plain(args, nargs, 1, false)) Py_RETURN_NOTIMPLEMENTED;
    static const auto op = handle<at::Tensor(const at::Tensor&)>("relu_module::relu", "");
    const at::Tensor& x = THPVariable_Unpack(args[0]);
    at::Tensor y;
    {
        pybind11::gil_scoped_release no_gil;
        y = op.call(x);
    }
    return THPVariable_Wrap(std::move(y));
    END_HANDLE_TH_ERRORS
}

PyObject* fast_relu_(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    if (!plain(args, nargs, 1, true)) Py_RETURN_NOTIMPLEMENTED;
    static const auto op = handle<void(at::Tensor&)>("relu_module::relu_", "");
    at::Tensor x = THPVariable_Unpack(args[0]);
    {
        pybind11::gil_scoped_release no_gil;
        op.call(x);
    }
    Py_INCREF(args[0]);
    return args[0];
    END_HANDLE_TH_ERRORS
}

PyObject* fast_relu_out(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
    HANDLE_TH_ERRORS
    if (!plain(args, nargs, 2, true)) Py_RETURN_NOTIMPLEMENTED;
    static const auto op = handle<void(const at::Tensor&, at::Tensor&)>("relu_module::relu", "out");
    const at::Tensor& x = THPVariable_Unpack(args[0]);
    at::Tensor out = THPVariable_Unpack(args[1]);
    {
        pybind11::gil_scoped_release no_gil;
        op.call(x, out);
    }
    Py_INCREF(args[1]);
    return args[1];
    END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"relu", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_relu)), METH_FASTCALL,
     "relu_module::relu(x), called from C."},
    {"relu_", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_relu_)),
     METH_FASTCALL, "relu_module::relu_(x) from C (returns x), or NotImplemented."},
    {"relu_out", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&fast_relu_out)),
     METH_FASTCALL, "relu_module::relu.out(x, out=out) from C (returns out), or NotImplemented."},
    {"set_recorders", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&set_recorders)),
     METH_FASTCALL,
     "Sets the Python implementations of relu, relu_ and relu_backward for calls autograd "
     "records."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// A Python module so that `import relu_module._torch_ops` loads the library (and runs the
// registrations above); it fetches the kernel table from relu_module._ext.
extern "C" PyMODINIT_FUNC PyInit__torch_ops(void) {
    static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_torch_ops", nullptr, -1, kMethods};
    g_api = static_cast<const relu_kernel::Api*>(PyCapsule_Import(relu_kernel::kApiCapsule, 0));
    if (g_api == nullptr) return nullptr;
    if (g_api->version != relu_kernel::kApiVersion) {
        PyErr_SetString(PyExc_ImportError,
                        "relu_module._torch_ops and relu_module._ext come from different builds; "
                        "reinstall relu-module");
        return nullptr;
    }
    return PyModule_Create(&def);
}
