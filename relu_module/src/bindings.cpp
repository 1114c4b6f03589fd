// Python bindings for the ReLU kernels. This file only validates arguments, allocates outputs
// and releases the GIL; the computation lives in relu_kernel.cpp.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "buffer_cache.hpp"
#include "relu_api.hpp"
#include "relu_kernel.hpp"
#include "settings.hpp"
#include "thread_pool.hpp"

namespace py = pybind11;

namespace {

// Releasing and re-taking the GIL costs ~0.1-0.25 us; below this many bytes the kernel itself
// takes about that long, so small calls keep the GIL.
constexpr std::size_t kReleaseGilMinBytes = std::size_t(64) << 10;

enum class Kind { f32, f64 };

bool finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}

// Releases the GIL for its scope when the call is large enough to pay for it, and never while the
// interpreter finalises: then the call runs on the caller's thread alone, holding the GIL (a
// __del__ in the final garbage collection would otherwise park the main thread below).
//
// Not pybind11's gil_scoped_release: a daemon thread that re-takes the GIL while the interpreter
// finalises is ended by Python 3.11 with pthread_exit, whose forced unwind through that class's
// noexcept destructor calls std::terminate (exit code 134; torch.relu aborts the same way). This
// helper parks such a thread instead, as Python 3.14 does: it never touches Python again and
// dies with the process, so exit is as clean as numpy's. If finalisation starts between the
// check and the re-take, the destructor lets the forced unwind pass (noexcept(false)).
class MaybeNoGil {
public:
    explicit MaybeNoGil(bool release)
        : saved_(release && !finalizing() ? PyEval_SaveThread() : nullptr) {}
    MaybeNoGil(const MaybeNoGil&) = delete;
    MaybeNoGil& operator=(const MaybeNoGil&) = delete;
    ~MaybeNoGil() noexcept(false) {
        if (saved_ == nullptr) return;
        while (finalizing()) std::this_thread::sleep_for(std::chrono::hours(1));
        PyEval_RestoreThread(saved_);
    }

private:
    PyThreadState* saved_;
};

// Prepares the pool a job of out_bytes would use and, if it could not start its threads, says
// so as a Python RuntimeWarning (GIL held) before anything is written: a caller that turned
// warnings into errors gets its arrays back untouched.
void warn_if_pool_degraded(std::size_t out_bytes) {
    relu_kernel::prepare_pool(out_bytes);
    const std::string w = relu_kernel::take_pool_warning();
    if (!w.empty() && PyErr_WarnEx(PyExc_RuntimeWarning, w.c_str(), 1) != 0) {
        throw py::error_already_set();  // warnings turned into errors
    }
}

// Runs work() for a job of out_bytes: on the caller's thread alone, GIL held, while the
// interpreter finalises; else with the GIL released when the job is large enough.
template <class Work>
void run_job(std::size_t out_bytes, Work work) {
    if (finalizing()) {
        relu_kernel::CallerOnly caller_only;
        work();
        return;
    }
    warn_if_pool_degraded(out_bytes);
    MaybeNoGil nogil(out_bytes >= kReleaseGilMinBytes);
    work();
}

std::string to_text(const py::handle& h) {
    return py::str(h).cast<std::string>();
}

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        s += std::to_string(a.shape()[d]);
        if (a.ndim() == 1 || d + 1 < a.ndim()) s += d + 1 < a.ndim() ? ", " : ",";
    }
    return s + ")";
}

py::array as_array(const py::handle& obj, const char* fn, const char* arg) {
    if (!py::isinstance<py::array>(obj)) {
        throw py::type_error(std::string(fn) + ": " + arg + " must be a numpy.ndarray here, got " +
                             to_text(py::type::handle_of(obj)) + "; call relu_module." + fn +
                             "() rather than relu_module._ext, which "
                             "also accepts torch tensors and sequences");
    }
    return py::reinterpret_borrow<py::array>(obj);
}

Kind kind_of(const py::array& a, const char* fn, const char* arg) {
    const py::dtype dt = a.dtype();
    const int num = dt.num();
    const char bo = dt.byteorder();
    const bool non_native = bo == '>';  // every platform this wheel builds for is little-endian
    if (!non_native && num == py::detail::npy_api::NPY_FLOAT_) return Kind::f32;
    if (!non_native && num == py::detail::npy_api::NPY_DOUBLE_) return Kind::f64;
    throw py::type_error(std::string(fn) + ": " + arg + " has unsupported dtype " + to_text(dt) +
                         "; accepted dtypes are float32 and float64 in native byte order. Convert "
                         "first, e.g. x.astype(np.float32)");
}

void require_writeable(const py::array& a, const char* fn, const char* arg) {
    if (!a.writeable()) {
        throw py::value_error(std::string(fn) + ": " + arg +
                              " is read-only (flags.writeable is False); "
                              "pass a writeable array, e.g. a copy made with np.array(" +
                              arg + ")");
    }
}

void require_same(const py::array& a, const py::array& ref, const char* fn, const char* arg,
                  const char* ref_name) {
    bool same_shape =
        a.ndim() == ref.ndim() && std::equal(a.shape(), a.shape() + a.ndim(), ref.shape());
    if (!same_shape) {
        throw py::value_error(std::string(fn) + ": " + arg + " has shape " + shape_str(a) +
                              " but " + ref_name + " has shape " + shape_str(ref) +
                              "; shapes must match exactly (no broadcasting)");
    }
    if (a.dtype().num() != ref.dtype().num() || a.dtype().byteorder() == '>') {
        throw py::value_error(std::string(fn) + ": " + arg + " has dtype " + to_text(a.dtype()) +
                              " but " + ref_name + " has dtype " + to_text(ref.dtype()) +
                              "; pass an array of dtype " + to_text(ref.dtype()));
    }
}

bool c_contiguous(const py::array& a) {
    return (a.flags() & py::array::c_style) != 0;
}
bool f_contiguous(const py::array& a) {
    return (a.flags() & py::array::f_style) != 0;
}
bool aligned(const py::array& a) {
    return (a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_) != 0;
}

std::size_t size_of(const py::array& a) {
    return static_cast<std::size_t>(a.size());
}

// Byte range [lo, hi) that an array's elements occupy.
void extent(const py::array& a, const char** lo, const char** hi) {
    const char* p = static_cast<const char*>(a.data());
    std::ptrdiff_t l = 0, h = static_cast<std::ptrdiff_t>(a.itemsize());
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        const std::ptrdiff_t span = (a.shape()[d] - 1) * a.strides()[d];
        if (span < 0)
            l += span;
        else
            h += span;
    }
    *lo = p + l;
    *hi = p + h;
}

// True if writing `out` element by element could clobber elements of `in` not yet read: the
// two overlap in memory and are not the very same view (same start and strides).
bool unsafe_overlap(const py::array& in, const py::array& out) {
    if (size_of(in) == 0) return false;
    const char *a0, *a1, *b0, *b1;
    extent(in, &a0, &a1);
    extent(out, &b0, &b1);
    if (!(a0 < b1 && b0 < a1)) return false;
    return !(in.data() == out.data() &&
             std::equal(in.strides(), in.strides() + in.ndim(), out.strides()));
}

// False if two elements of `a` might share memory: a zero stride on a dimension of length > 1
// (np.broadcast_to made writeable, torch's expand()), or strides that cannot be proved apart.
// Writing such an array from several threads would give a result that depends on timing.
bool elements_disjoint(const py::array& a) {
    if (c_contiguous(a) || f_contiguous(a)) return true;  // the common case, without sorting
    std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> dims;  // (|stride|, length)
    for (py::ssize_t d = 0; d < a.ndim(); ++d) {
        if (a.shape()[d] == 0) return true;
        if (a.shape()[d] > 1) dims.emplace_back(std::abs(a.strides()[d]), a.shape()[d]);
    }
    std::sort(dims.begin(), dims.end());
    std::ptrdiff_t extent = a.itemsize();  // bytes spanned by the inner dimensions
    for (const auto& [stride, len] : dims) {
        if (stride < extent) return false;
        extent = stride * (len - 1) + extent;
    }
    return true;
}

void require_disjoint(const py::array& a, const char* fn, const char* arg) {
    if (!elements_disjoint(a)) {
        throw py::value_error(std::string(fn) +
                              ": unsupported operation: more than one element "
                              "of the written-to array " +
                              arg +
                              " refers to a single memory "
                              "location (a zero or overlapping stride, e.g. np.broadcast_to or "
                              "torch's expand()); write into a copy, e.g. np.array(" +
                              arg + ")");
    }
}

// A private, C-contiguous copy of an input that overlaps the output (numpy ufuncs do the same).
py::array defensive_copy(const py::array& a) {
    PyObject* copy = py::detail::npy_api::get().PyArray_NewCopy_(a.ptr(), 0 /* NPY_CORDER */);
    if (copy == nullptr) throw py::error_already_set();  // e.g. MemoryError
    return py::reinterpret_steal<py::array>(copy);
}

struct CachedBlock {
    void* ptr;
    std::size_t capacity;
};

// Order of x's dimensions from outermost to innermost if x is dense (its elements fill one
// block with no gaps or overlaps, in some order of dimensions and stride signs, as a transpose
// or channels_last is); the identity (C order) otherwise. torch's preserve_format rule.
std::vector<std::size_t> dense_order(const py::array& x) {
    const std::size_t nd = static_cast<std::size_t>(x.ndim());
    std::vector<std::size_t> order(nd);
    std::iota(order.begin(), order.end(), 0);
    if (c_contiguous(x)) return order;
    auto mag = [&](std::size_t d) { return std::abs(x.strides()[d]); };
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t a, std::size_t b) { return mag(a) > mag(b); });
    std::ptrdiff_t expect = x.itemsize();
    for (std::size_t i = nd; i-- > 0;) {
        const std::size_t d = order[i];
        if (x.shape()[d] == 1) continue;
        if (mag(d) != expect) {  // a gap (slice) or an overlap: C order, as torch does
            std::iota(order.begin(), order.end(), 0);
            return order;
        }
        expect *= x.shape()[d];
    }
    return order;
}

// A new uninitialised array shaped like x, with x's memory layout when x is dense (C, Fortran,
// channels_last, any transpose), else C order. Large ones live in a huge-page block from the
// buffer cache, returned there when the array (and every view of it) is gone; the rest come
// from numpy's allocator.
py::array empty_like_layout(const py::array& x) {
    std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
    std::vector<py::ssize_t> strides(shape.size());
    const std::vector<std::size_t> order = dense_order(x);
    py::ssize_t s = x.itemsize();
    for (std::size_t i = order.size(); i-- > 0;) {
        strides[order[i]] = s;
        s *= std::max<py::ssize_t>(shape[order[i]], 1);
    }
    const std::size_t nbytes = size_of(x) * static_cast<std::size_t>(x.itemsize());
    if (nbytes >= relu_kernel::kCacheMinBytes) {
        std::size_t capacity = 0;
        if (void* p = relu_kernel::acquire_buffer(nbytes, &capacity)) {
            auto* block = new CachedBlock{p, capacity};
            py::capsule owner(block, [](void* b) {
                auto* blk = static_cast<CachedBlock*>(b);
                relu_kernel::release_buffer(blk->ptr, blk->capacity);
                delete blk;
            });
            return py::array(x.dtype(), shape, strides, p, owner);
        }
    }
    return py::array(x.dtype(), shape, strides);
}

template <class T>
void relu_dispatch(const py::array& x, py::array& out) {
    const std::size_t n = size_of(x);
    if (n == 0) return;
    const bool flat =
        aligned(x) && aligned(out) &&
        ((c_contiguous(x) && c_contiguous(out)) || (f_contiguous(x) && f_contiguous(out)));
    const T* xp = static_cast<const T*>(x.data());
    T* yp = static_cast<T*>(out.mutable_data());
    const int ndim = static_cast<int>(x.ndim());
    const std::ptrdiff_t one = 1, zero_stride = 0;
    const std::ptrdiff_t* shape = ndim ? x.shape() : &one;
    relu_kernel::View xv{const_cast<char*>(static_cast<const char*>(x.data())),
                         ndim ? x.strides() : &zero_stride};
    relu_kernel::View yv{static_cast<char*>(out.mutable_data()),
                         ndim ? out.strides() : &zero_stride};
    auto work = [&] {
        if (flat)
            relu_kernel::relu(xp, yp, n);
        else
            relu_kernel::relu_strided<T>(ndim ? ndim : 1, shape, xv, yv);
    };
    run_job(n * sizeof(T), work);
}

template <class T>
void backward_dispatch(const py::array& g, const py::array& x, py::array& out) {
    const std::size_t n = size_of(x);
    if (n == 0) return;
    const bool flat = aligned(g) && aligned(x) && aligned(out) &&
                      ((c_contiguous(g) && c_contiguous(x) && c_contiguous(out)) ||
                       (f_contiguous(g) && f_contiguous(x) && f_contiguous(out)));
    const int ndim = static_cast<int>(x.ndim());
    const std::ptrdiff_t one = 1, zero_stride = 0;
    const std::ptrdiff_t* shape = ndim ? x.shape() : &one;
    relu_kernel::View gv{const_cast<char*>(static_cast<const char*>(g.data())),
                         ndim ? g.strides() : &zero_stride};
    relu_kernel::View xv{const_cast<char*>(static_cast<const char*>(x.data())),
                         ndim ? x.strides() : &zero_stride};
    relu_kernel::View yv{static_cast<char*>(out.mutable_data()),
                         ndim ? out.strides() : &zero_stride};
    auto work = [&] {
        if (flat) {
            relu_kernel::relu_backward(reinterpret_cast<const T*>(gv.data),
                                       reinterpret_cast<const T*>(xv.data),
                                       reinterpret_cast<T*>(yv.data), n);
        } else {
            relu_kernel::relu_backward_strided<T>(ndim ? ndim : 1, shape, gv, xv, yv);
        }
    };
    run_job(n * sizeof(T), work);
}

py::object relu_py(const py::handle& x_obj, const py::handle& out_obj) {
    py::array x = as_array(x_obj, "relu", "x");
    const Kind kind = kind_of(x, "relu", "x");
    py::array out;
    if (out_obj.is_none()) {
        out = empty_like_layout(x);
    } else {
        out = as_array(out_obj, "relu", "out");
        require_same(out, x, "relu", "out", "x");
        require_writeable(out, "relu", "out");
        require_disjoint(out, "relu", "out");
        if (unsafe_overlap(x, out)) x = defensive_copy(x);
    }
    if (kind == Kind::f32)
        relu_dispatch<float>(x, out);
    else
        relu_dispatch<double>(x, out);
    return out_obj.is_none() ? py::object(std::move(out))
                             : py::reinterpret_borrow<py::object>(out_obj);
}

py::object relu_inplace_py(const py::handle& x_obj) {
    py::array x = as_array(x_obj, "relu_", "x");
    const Kind kind = kind_of(x, "relu_", "x");
    require_writeable(x, "relu_", "x");
    require_disjoint(x, "relu_", "x");
    // In place on the view itself, whatever its strides: never through a temporary.
    if (kind == Kind::f32)
        relu_dispatch<float>(x, x);
    else
        relu_dispatch<double>(x, x);
    return py::reinterpret_borrow<py::object>(x_obj);
}

py::object relu_backward_py(const py::handle& g_obj, const py::handle& x_obj,
                            const py::handle& out_obj) {
    py::array g = as_array(g_obj, "relu_backward", "grad");
    py::array x = as_array(x_obj, "relu_backward", "x");
    const Kind kind = kind_of(x, "relu_backward", "x");
    kind_of(g, "relu_backward", "grad");
    require_same(g, x, "relu_backward", "grad", "x");
    py::array out;
    if (out_obj.is_none()) {
        out = empty_like_layout(x);
    } else {
        out = as_array(out_obj, "relu_backward", "out");
        require_same(out, x, "relu_backward", "out", "x");
        require_writeable(out, "relu_backward", "out");
        require_disjoint(out, "relu_backward", "out");
        if (unsafe_overlap(g, out)) g = defensive_copy(g);
        if (unsafe_overlap(x, out)) x = defensive_copy(x);
    }
    if (kind == Kind::f32)
        backward_dispatch<float>(g, x, out);
    else
        backward_dispatch<double>(g, x, out);
    return out_obj.is_none() ? py::object(std::move(out))
                             : py::reinterpret_borrow<py::object>(out_obj);
}

void set_num_threads_py(long long n) {
    if (n < 1 || n > relu_kernel::kMaxThreads) {
        throw py::value_error("set_num_threads: n must be in [1, " +
                              std::to_string(relu_kernel::kMaxThreads) + "], got " +
                              std::to_string(n));
    }
    relu_kernel::set_num_threads(static_cast<int>(n));
}

std::vector<std::string> settings_warnings() {
    return relu_kernel::settings().warnings;
}

long long spin_us() {
    return relu_kernel::settings().spin_us;
}

py::dict policy_dict() {
    const relu_kernel::Policy& p = relu_kernel::policy();
    py::dict d;
    d["l2_bytes"] = p.l2_bytes;
    d["llc_bytes"] = p.llc_bytes;
    d["parallel_min_bytes"] = p.parallel_min_bytes;
    d["stream_min_bytes"] = p.stream_min_bytes;
    d["source"] = p.source;
    d["why"] = p.why;
    return d;
}

std::size_t pool_warning_c(std::size_t out_bytes, char* buf, std::size_t cap) {
    relu_kernel::prepare_pool(out_bytes);
    const std::string w = relu_kernel::take_pool_warning();
    if (w.empty() || cap == 0) return 0;
    const std::size_t n = std::min(w.size(), cap - 1);
    std::copy(w.begin(), w.begin() + static_cast<std::ptrdiff_t>(n), buf);
    buf[n] = '\0';
    return n;
}

// The table relu_module._torch_ops calls the kernels through (relu_api.hpp).
const relu_kernel::Api kApi{
    relu_kernel::kApiVersion,
    &relu_kernel::relu_strided<float>,
    &relu_kernel::relu_strided<double>,
    &relu_kernel::relu_backward_strided<float>,
    &relu_kernel::relu_backward_strided<double>,
    &relu_kernel::job_env,
    &relu_kernel::relu_part<float>,
    &relu_kernel::relu_part<double>,
    &relu_kernel::relu_backward_part<float>,
    &relu_kernel::relu_backward_part<double>,
    &pool_warning_c,
    relu_kernel::kCacheMinBytes,
    &relu_kernel::acquire_buffer,
    [](void* p, std::size_t capacity) { relu_kernel::release_buffer(p, capacity); },
};

}  // namespace

PYBIND11_MODULE(_ext, m) {
    m.doc() =
        "Compiled ReLU kernels (private; use the relu_module package, which also takes torch "
        "tensors and sequences).";
    m.def("relu", &relu_py, py::arg("x"), py::arg("out") = py::none(),
          "ReLU of a float32/float64 ndarray, bit-identical to torch.relu (keeps -0.0 and NaN "
          "payloads). Writes into `out` when given (same shape and dtype, writeable) and returns "
          "it; otherwise returns a new array with x's memory layout.");
    m.def("relu_", &relu_inplace_py, py::arg("x"),
          "In-place ReLU of a writeable float32/float64 ndarray of any strides; returns x.");
    m.def("relu_backward", &relu_backward_py, py::arg("grad"), py::arg("x"),
          py::arg("out") = py::none(),
          "Gradient of ReLU: where(x <= 0, +0, grad), bit-identical to torch's threshold_backward "
          "(a NaN x passes its gradient). grad, x and out share one shape and dtype.");
    m.def("get_num_threads", &relu_kernel::get_num_threads,
          "Threads used for large arrays (RELU_MODULE_NUM_THREADS, else the usable CPUs).");
    m.def("set_num_threads", &set_num_threads_py, py::arg("n"),
          "Sets the number of threads used for large arrays (1 <= n <= MAX_THREADS).");
    m.def("settings_warnings", &settings_warnings,
          "One line per ignored RELU_MODULE_* environment value (parsed once, at import).");
    m.def("spin_us", &spin_us,
          "How long pool workers spin after a job while calls keep coming (RELU_MODULE_SPIN_US).");
    m.def("simd_level", &relu_kernel::simd_level,
          "Instruction set the runtime dispatcher picked: 'avx512f', 'avx2' or 'baseline'.");
    m.def("empty_cache", &relu_kernel::clear_buffer_cache,
          "Unmaps the cached output blocks (kept for reuse by large out-of-place calls); returns "
          "the bytes released.");
    m.def("cached_bytes", &relu_kernel::cached_bytes, "Bytes held by the output-block cache.");
    m.def("cache_limit_bytes", &relu_kernel::cache_limit_bytes,
          "Limit of the output-block cache (RELU_MODULE_CACHE_MB, default 1024 MiB; 0 disables).");
    m.attr("CACHE_MIN_BYTES") = relu_kernel::kCacheMinBytes;
    m.attr("PARALLEL_MIN_BYTES") = relu_kernel::policy().parallel_min_bytes;
    m.attr("STREAM_MIN_BYTES") = relu_kernel::policy().stream_min_bytes;
    m.def("policy", &policy_dict,
          "The mid-size policy derived from this CPU's caches: cache sizes, thresholds, and why.");
    m.attr("_C_API") = py::capsule(&kApi, relu_kernel::kApiCapsule);
    m.attr("RELEASE_GIL_MIN_BYTES") = kReleaseGilMinBytes;
    m.attr("MAX_THREADS") = relu_kernel::kMaxThreads;
}
