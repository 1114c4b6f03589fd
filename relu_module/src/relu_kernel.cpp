#include "relu_kernel.hpp"

#include <algorithm>
#include <cstring>
#include <memory>
#include <type_traits>

#include "thread_pool.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#include <xmmintrin.h>
#endif

// Runtime dispatch: one portable wheel, with AVX2/AVX-512 clones of the hot loops picked by the
// loader (GNU ifunc). A plain x86-64 build loses up to 2x on float64 in cache; clones lose nothing.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define RELU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RELU_CLONES
#endif

namespace relu_kernel {
namespace {

constexpr std::size_t kCacheLine = 64;

// ---- serial leaf loops: branchless, vectorised (check with -fopt-info-vec) ----------------
//
// One semantic, torch's: y = MAXPS(+0, x), which is what torch's vectorised clamp_min runs. It
// returns x unless 0 > x, so NaN (any payload) and -0.0 pass unchanged. Under
// denormals-are-zero (torch.set_flush_denormal(True) sets DAZ in MXCSR) MAXPS reads a denormal
// as a zero of its sign and returns that zero; a compare-and-mask loop would return the
// denormal's bits instead. GCC compiles `x < 0 ? 0 : x` to compare-and-mask, so when the
// calling thread has DAZ set (the pool gives every worker the caller's MXCSR) the forward leaves
// switch to an integer loop with MAXPS's DAZ result.

// Unrolled 4x after vectorisation: in L1/L2 the loop-control uops otherwise cap throughput.
#define RELU_UNROLL _Pragma("GCC unroll 4")

// Same-width unsigned integer, allowed to alias the float it reinterprets.
template <class T>
struct Bits;
template <>
struct Bits<float> {
    typedef std::uint32_t __attribute__((may_alias)) U;
};
template <>
struct Bits<double> {
    typedef std::uint64_t __attribute__((may_alias)) U;
};

inline bool denormals_are_zero() {
#if defined(__SSE2__)
    return (_mm_getcsr() & 0x0040u) != 0;  // MXCSR.DAZ
#else
    return false;
#endif
}

// MAXPS(+0, x) under DAZ, on the bits: a zero or denormal becomes the zero of its sign, a NaN
// passes unchanged, any other negative (-inf included) becomes +0.
template <class U>
inline U relu_daz_bits(U u) {
    constexpr int kBits = 8 * sizeof(U);
    constexpr U kSign = U(1) << (kBits - 1);
    constexpr U kExp = kBits == 32 ? U(0x7F800000u) : U(0x7FF0000000000000ull);
    const U zero_or_denormal = (u & kExp) == 0 ? ~U(0) : U(0);
    const U nan = (u & ~kSign) > kExp ? ~U(0) : U(0);
    const U keep = (u & kSign) == 0 ? ~U(0) : nan;
    return (zero_or_denormal & (u & kSign)) | (~zero_or_denormal & keep & u);
}

template <class T>
RELU_CLONES void relu_leaf_copy(const T* __restrict x, T* __restrict y, std::size_t n) {
    RELU_UNROLL for (std::size_t i = 0; i < n; ++i) y[i] = x[i] < T(0) ? T(0) : x[i];
}
template <class T>
RELU_CLONES void relu_leaf_inplace(T* y, std::size_t n) {
    RELU_UNROLL for (std::size_t i = 0; i < n; ++i) y[i] = y[i] < T(0) ? T(0) : y[i];
}
template <class T>
RELU_CLONES void relu_leaf_daz(const T* x, T* y, std::size_t n) {  // x == y allowed
    using U = typename Bits<T>::U;
    const U* xu = reinterpret_cast<const U*>(x);
    U* yu = reinterpret_cast<U*>(y);
    RELU_UNROLL for (std::size_t i = 0; i < n; ++i) yu[i] = relu_daz_bits<U>(xu[i]);
}

// torch's threshold_backward: dx = (x <= 0) ? +0 : g. The compare honours DAZ as torch's does.
template <class T>
RELU_CLONES void bwd_leaf_copy(const T* __restrict g, const T* __restrict x, T* __restrict y,
                               std::size_t n) {
    RELU_UNROLL for (std::size_t i = 0; i < n; ++i) y[i] = x[i] <= T(0) ? T(0) : g[i];
}
template <class T>
RELU_CLONES void bwd_leaf_into_g(T* g, const T* __restrict x, std::size_t n) {
    RELU_UNROLL for (std::size_t i = 0; i < n; ++i) g[i] = x[i] <= T(0) ? T(0) : g[i];
}
template <class T>
RELU_CLONES void bwd_leaf_into_x(const T* __restrict g, T* x, std::size_t n) {
    RELU_UNROLL for (std::size_t i = 0; i < n; ++i) x[i] = x[i] <= T(0) ? T(0) : g[i];
}

// One element, for the strided loops: the same semantic as the leaves.
template <class T>
inline T relu_one(T v, bool daz) {
    if (!daz) return v < T(0) ? T(0) : v;
    using U = typename Bits<T>::U;
    U u;
    std::memcpy(&u, &v, sizeof(T));
    u = relu_daz_bits<U>(u);
    std::memcpy(&v, &u, sizeof(T));
    return v;
}

// Non-temporal variant for outputs far larger than the cache: skips the read-for-ownership of
// the destination lines and does not evict the input. SSE2 is baseline x86-64, and 16-byte
// streaming stores saturate memory bandwidth as well as wider ones. MAXPS/MAXPD is the
// semantic itself, DAZ included.
#if defined(__SSE2__)
template <class T>
struct Sse;
template <>
struct Sse<float> {
    using V = __m128;
    static V zero() { return _mm_setzero_ps(); }
    static V load(const float* p) { return _mm_loadu_ps(p); }
    static V max(V a, V b) { return _mm_max_ps(a, b); }
    static void stream(float* p, V v) { _mm_stream_ps(p, v); }
};
template <>
struct Sse<double> {
    using V = __m128d;
    static V zero() { return _mm_setzero_pd(); }
    static V load(const double* p) { return _mm_loadu_pd(p); }
    static V max(V a, V b) { return _mm_max_pd(a, b); }
    static void stream(double* p, V v) { _mm_stream_pd(p, v); }
};

template <class T>
void relu_leaf_stream(const T* x, T* y, std::size_t n, bool daz) {
    using S = Sse<T>;
    constexpr std::size_t kLanes = 16 / sizeof(T);
    std::size_t i = 0;
    for (; i < n && (reinterpret_cast<std::uintptr_t>(y + i) & 15u) != 0; ++i)
        y[i] = relu_one(x[i], daz);
    const typename S::V zero = S::zero();
    for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
        for (std::size_t k = 0; k < 4; ++k) {  // MAXPS returns its 2nd operand on NaN/zeros
            S::stream(y + i + k * kLanes, S::max(zero, S::load(x + i + k * kLanes)));
        }
    }
    for (; i < n; ++i) y[i] = relu_one(x[i], daz);
    _mm_sfence();  // order the weakly-ordered streaming stores before the pool's completion flag
}
constexpr bool kHaveStream = true;
#else
template <class T>
void relu_leaf_stream(const T* x, T* y, std::size_t n, bool daz) {
    for (std::size_t i = 0; i < n; ++i) y[i] = relu_one(x[i], daz);
}
constexpr bool kHaveStream = false;
#endif

template <class T>
inline void bwd_leaf(const T* g, const T* x, T* y, std::size_t n) {
    if (y == g)
        bwd_leaf_into_g(y, x, n);
    else if (y == x)
        bwd_leaf_into_x(g, y, n);
    else
        bwd_leaf_copy(g, x, y, n);
}

template <class T>
inline void relu_serial(const T* x, T* y, std::size_t n, bool stream, bool daz) {
    if (stream && (reinterpret_cast<std::uintptr_t>(y) % sizeof(T)) == 0)
        relu_leaf_stream(x, y, n, daz);
    else if (daz)
        relu_leaf_daz(x, y, n);
    else if (x == y)
        relu_leaf_inplace(y, n);
    else
        relu_leaf_copy(x, y, n);
}

// Blocks that threads claim dynamically: small enough to balance two threads when one of them
// arrives late, large enough that claiming one (an atomic add) costs nothing next to the work.
constexpr std::size_t kMinBlockBytes = std::size_t(32) << 10;
constexpr std::size_t kMaxBlockBytes = std::size_t(1) << 20;
constexpr std::size_t kBlocksPerThread = 8;

// Elements per block for a contiguous job of n elements of `elem` bytes on `threads` threads;
// a multiple of the cache line so two threads never write the same line.
inline std::size_t block_elems(std::size_t n, std::size_t elem, int threads) {
    std::size_t bytes = n * elem / (kBlocksPerThread * static_cast<std::size_t>(threads));
    bytes = std::min(kMaxBlockBytes, std::max(kMinBlockBytes, bytes));
    bytes -= bytes % kCacheLine;
    return bytes / elem;
}

// Runs task over `blocks` blocks on the pool when the output is large enough to pay for a
// second thread; otherwise (or when another thread owns the pool) entirely on the caller.
void run(ThreadPool::Task task, void* ctx, std::size_t blocks, std::size_t out_bytes) {
    if (blocks > 1 && out_bytes >= policy().parallel_min_bytes && threads_for_call() > 1) {
        std::shared_ptr<ThreadPool> pool = global_pool();
        if (pool->try_run(task, ctx, blocks)) return;
    }
    for (std::size_t b = 0; b < blocks; ++b) task(ctx, b);
}

template <class T>
struct UnaryJob {
    const T* x;
    T* y;
    std::size_t n;
    std::size_t block;
    bool stream;
};

template <class T>
void unary_task(void* ctx, std::size_t blk) {
    const auto& j = *static_cast<const UnaryJob<T>*>(ctx);
    const std::size_t b = blk * j.block, e = std::min(j.n, b + j.block);
    relu_serial(j.x + b, j.y + b, e - b, j.stream, denormals_are_zero());  // the caller's MXCSR
}

template <class T>
struct BinaryJob {
    const T* g;
    const T* x;
    T* y;
    std::size_t n;
    std::size_t block;
};

template <class T>
void binary_task(void* ctx, std::size_t blk) {
    const auto& j = *static_cast<const BinaryJob<T>*>(ctx);
    const std::size_t b = blk * j.block, e = std::min(j.n, b + j.block);
    bwd_leaf(j.g + b, j.x + b, j.y + b, e - b);
}

template <class T>
void relu_contiguous(const T* x, T* y, std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    const bool stream = kHaveStream && x != y && bytes >= policy().stream_min_bytes;
    if (bytes < policy().parallel_min_bytes || threads_for_call() == 1) {
        relu_serial(x, y, n, stream, denormals_are_zero());
        return;
    }
    const std::size_t block = block_elems(n, sizeof(T), threads_for_call());
    UnaryJob<T> job{x, y, n, block, stream};
    run(&unary_task<T>, &job, (n + block - 1) / block, bytes);
}

template <class T>
void relu_backward_contiguous(const T* g, const T* x, T* y, std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < policy().parallel_min_bytes || threads_for_call() == 1) {
        bwd_leaf(g, x, y, n);
        return;
    }
    const std::size_t block = block_elems(n, sizeof(T), threads_for_call());
    BinaryJob<T> job{g, x, y, n, block};
    run(&binary_task<T>, &job, (n + block - 1) / block, bytes);
}

// ---- strided n-d iteration ------------------------------------------------------------------

constexpr int kMaxDims = 64;

// Drops length-1 dimensions and merges neighbours that are contiguous with each other in every
// operand, so that e.g. a row-padded 2-d slice becomes one long inner loop per row.
template <int K>
int coalesce(int ndim, const std::ptrdiff_t* shape, const std::ptrdiff_t* const* strides,
             std::ptrdiff_t* out_shape, std::ptrdiff_t (*out_strides)[kMaxDims]) {
    int m = 0;
    for (int d = 0; d < ndim; ++d) {
        if (shape[d] == 1) continue;
        if (m > 0) {
            bool merge = true;
            for (int k = 0; k < K; ++k)
                if (out_strides[k][m - 1] != shape[d] * strides[k][d]) merge = false;
            if (merge) {
                out_shape[m - 1] *= shape[d];
                for (int k = 0; k < K; ++k) out_strides[k][m - 1] = strides[k][d];
                continue;
            }
        }
        out_shape[m] = shape[d];
        for (int k = 0; k < K; ++k) out_strides[k][m] = strides[k][d];
        ++m;
    }
    if (m == 0) {  // a single element
        out_shape[0] = 1;
        for (int k = 0; k < K; ++k) out_strides[k][0] = 0;
        m = 1;
    }
    return m;
}

template <class T>
struct StridedUnary {
    std::size_t rows_per_block;  // of the first (outermost) dimension
    int ndim;
    std::ptrdiff_t shape[kMaxDims];
    std::ptrdiff_t st[2][kMaxDims];  // x, y
    char* base[2];
};

template <class T>
void unary_inner(char* xp, char* yp, std::ptrdiff_t n, std::ptrdiff_t sx, std::ptrdiff_t sy) {
    const bool aligned =
        ((reinterpret_cast<std::uintptr_t>(xp) | reinterpret_cast<std::uintptr_t>(yp)) %
         sizeof(T)) == 0;
    const bool daz = denormals_are_zero();
    if (aligned && sx == static_cast<std::ptrdiff_t>(sizeof(T)) &&
        sy == static_cast<std::ptrdiff_t>(sizeof(T))) {
        relu_serial(reinterpret_cast<const T*>(xp), reinterpret_cast<T*>(yp),
                    static_cast<std::size_t>(n), false, daz);
        return;
    }
    for (std::ptrdiff_t i = 0; i < n; ++i, xp += sx, yp += sy) {
        T v;
        std::memcpy(&v, xp, sizeof(T));  // strided views may be unaligned (e.g. np.frombuffer)
        v = relu_one(v, daz);
        std::memcpy(yp, &v, sizeof(T));
    }
}

template <class T>
void unary_rec(const StridedUnary<T>& j, int d, char* xp, char* yp) {
    if (d == j.ndim - 1) {
        unary_inner<T>(xp, yp, j.shape[d], j.st[0][d], j.st[1][d]);
        return;
    }
    for (std::ptrdiff_t i = 0; i < j.shape[d]; ++i, xp += j.st[0][d], yp += j.st[1][d])
        unary_rec(j, d + 1, xp, yp);
}

template <class T>
void strided_unary_task(void* ctx, std::size_t blk) {
    const auto& j = *static_cast<const StridedUnary<T>*>(ctx);
    const std::size_t len = static_cast<std::size_t>(j.shape[0]);
    const std::size_t b = blk * j.rows_per_block, e = std::min(len, b + j.rows_per_block);
    if (e <= b) return;
    char* xp = j.base[0] + static_cast<std::ptrdiff_t>(b) * j.st[0][0];
    char* yp = j.base[1] + static_cast<std::ptrdiff_t>(b) * j.st[1][0];
    if (j.ndim == 1) {
        unary_inner<T>(xp, yp, static_cast<std::ptrdiff_t>(e - b), j.st[0][0], j.st[1][0]);
        return;
    }
    for (std::size_t i = b; i < e; ++i, xp += j.st[0][0], yp += j.st[1][0]) unary_rec(j, 1, xp, yp);
}

template <class T>
struct StridedBinary {
    std::size_t rows_per_block;
    int ndim;
    std::ptrdiff_t shape[kMaxDims];
    std::ptrdiff_t st[3][kMaxDims];  // grad, x, y
    char* base[3];
};

template <class T>
void binary_inner(char* gp, char* xp, char* yp, std::ptrdiff_t n, std::ptrdiff_t sg,
                  std::ptrdiff_t sx, std::ptrdiff_t sy) {
    const auto es = static_cast<std::ptrdiff_t>(sizeof(T));
    const bool aligned =
        ((reinterpret_cast<std::uintptr_t>(gp) | reinterpret_cast<std::uintptr_t>(xp) |
          reinterpret_cast<std::uintptr_t>(yp)) %
         sizeof(T)) == 0;
    if (aligned && sg == es && sx == es && sy == es) {
        bwd_leaf(reinterpret_cast<const T*>(gp), reinterpret_cast<const T*>(xp),
                 reinterpret_cast<T*>(yp), static_cast<std::size_t>(n));
        return;
    }
    for (std::ptrdiff_t i = 0; i < n; ++i, gp += sg, xp += sx, yp += sy) {
        T g, v;
        std::memcpy(&g, gp, sizeof(T));
        std::memcpy(&v, xp, sizeof(T));
        v = v <= T(0) ? T(0) : g;
        std::memcpy(yp, &v, sizeof(T));
    }
}

template <class T>
void binary_rec(const StridedBinary<T>& j, int d, char* gp, char* xp, char* yp) {
    if (d == j.ndim - 1) {
        binary_inner<T>(gp, xp, yp, j.shape[d], j.st[0][d], j.st[1][d], j.st[2][d]);
        return;
    }
    for (std::ptrdiff_t i = 0; i < j.shape[d];
         ++i, gp += j.st[0][d], xp += j.st[1][d], yp += j.st[2][d])
        binary_rec(j, d + 1, gp, xp, yp);
}

template <class T>
void strided_binary_task(void* ctx, std::size_t blk) {
    const auto& j = *static_cast<const StridedBinary<T>*>(ctx);
    const std::size_t len = static_cast<std::size_t>(j.shape[0]);
    const std::size_t b = blk * j.rows_per_block, e = std::min(len, b + j.rows_per_block);
    if (e <= b) return;
    const auto off = static_cast<std::ptrdiff_t>(b);
    char* gp = j.base[0] + off * j.st[0][0];
    char* xp = j.base[1] + off * j.st[1][0];
    char* yp = j.base[2] + off * j.st[2][0];
    if (j.ndim == 1) {
        binary_inner<T>(gp, xp, yp, static_cast<std::ptrdiff_t>(e - b), j.st[0][0], j.st[1][0],
                        j.st[2][0]);
        return;
    }
    for (std::size_t i = b; i < e; ++i, gp += j.st[0][0], xp += j.st[1][0], yp += j.st[2][0])
        binary_rec(j, 1, gp, xp, yp);
}

std::size_t element_count(int ndim, const std::ptrdiff_t* shape) {
    std::size_t n = 1;
    for (int d = 0; d < ndim; ++d) n *= static_cast<std::size_t>(shape[d]);
    return n;
}

// Splits the outermost dimension into blocks of about block_elems() elements and runs them.
template <class Job>
void run_rows(ThreadPool::Task task, Job& j, std::size_t elem) {
    const std::size_t n = element_count(j.ndim, j.shape);
    const std::size_t rows = static_cast<std::size_t>(j.shape[0]);
    const std::size_t row_elems = std::max<std::size_t>(1, n / rows);
    j.rows_per_block =
        std::max<std::size_t>(1, block_elems(n, elem, threads_for_call()) / row_elems);
    run(task, &j, (rows + j.rows_per_block - 1) / j.rows_per_block, n * elem);
}

}  // namespace

void relu(const float* x, float* out, std::size_t n) {
    relu_contiguous(x, out, n);
}
void relu(const double* x, double* out, std::size_t n) {
    relu_contiguous(x, out, n);
}
void relu_backward(const float* g, const float* x, float* out, std::size_t n) {
    relu_backward_contiguous(g, x, out, n);
}
void relu_backward(const double* g, const double* x, double* out, std::size_t n) {
    relu_backward_contiguous(g, x, out, n);
}

JobEnv job_env(std::size_t out_bytes, bool in_place) {
    JobEnv env{0, kHaveStream && !in_place && out_bytes >= policy().stream_min_bytes};
#if defined(__SSE2__)
    env.csr = _mm_getcsr();
#endif
    return env;
}

namespace {

// For one share run on a thread that is not the job's caller (an OpenMP worker of torch's): the
// caller's MXCSR for the share's duration, so DAZ decides the semantics as it would on the
// caller's thread, then the worker's own back (the thread belongs to torch).
class CallerCsr {
public:
    explicit CallerCsr(unsigned csr) {
#if defined(__SSE2__)
        saved_ = _mm_getcsr();
        if (saved_ != csr) _mm_setcsr(csr);
#else
        (void)csr;
#endif
    }
    ~CallerCsr() {
#if defined(__SSE2__)
        if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
#endif
    }
    CallerCsr(const CallerCsr&) = delete;
    CallerCsr& operator=(const CallerCsr&) = delete;

private:
    unsigned saved_ = 0;
};

}  // namespace

template <class T>
void relu_part(const T* x, T* out, std::size_t n, JobEnv env) {
    CallerCsr scope(env.csr);
    relu_serial(x, out, n, env.stream, denormals_are_zero());
}

template <class T>
void relu_backward_part(const T* g, const T* x, T* out, std::size_t n, JobEnv env) {
    CallerCsr scope(env.csr);
    bwd_leaf(g, x, out, n);
}

template void relu_part<float>(const float*, float*, std::size_t, JobEnv);
template void relu_part<double>(const double*, double*, std::size_t, JobEnv);
template void relu_backward_part<float>(const float*, const float*, float*, std::size_t, JobEnv);
template void relu_backward_part<double>(const double*, const double*, double*, std::size_t,
                                         JobEnv);

template <class T>
void relu_strided(int ndim, const std::ptrdiff_t* shape, View x, View out) {
    StridedUnary<T> j;
    const std::ptrdiff_t* strides[2] = {x.strides, out.strides};
    j.ndim = coalesce<2>(ndim, shape, strides, j.shape, j.st);
    j.base[0] = x.data;
    j.base[1] = out.data;
    const auto es = static_cast<std::ptrdiff_t>(sizeof(T));
    const bool aligned = (reinterpret_cast<std::uintptr_t>(x.data) % sizeof(T)) == 0 &&
                         (reinterpret_cast<std::uintptr_t>(out.data) % sizeof(T)) == 0;
    if (j.ndim == 1 && j.st[0][0] == es && j.st[1][0] == es && aligned) {
        relu_contiguous(reinterpret_cast<const T*>(x.data), reinterpret_cast<T*>(out.data),
                        static_cast<std::size_t>(j.shape[0]));
        return;
    }
    run_rows(&strided_unary_task<T>, j, sizeof(T));
}

template <class T>
void relu_backward_strided(int ndim, const std::ptrdiff_t* shape, View grad, View x, View out) {
    StridedBinary<T> j;
    const std::ptrdiff_t* strides[3] = {grad.strides, x.strides, out.strides};
    j.ndim = coalesce<3>(ndim, shape, strides, j.shape, j.st);
    j.base[0] = grad.data;
    j.base[1] = x.data;
    j.base[2] = out.data;
    const auto es = static_cast<std::ptrdiff_t>(sizeof(T));
    const bool aligned = (reinterpret_cast<std::uintptr_t>(grad.data) % sizeof(T)) == 0 &&
                         (reinterpret_cast<std::uintptr_t>(x.data) % sizeof(T)) == 0 &&
                         (reinterpret_cast<std::uintptr_t>(out.data) % sizeof(T)) == 0;
    if (j.ndim == 1 && j.st[0][0] == es && j.st[1][0] == es && j.st[2][0] == es && aligned) {
        relu_backward_contiguous(reinterpret_cast<const T*>(grad.data),
                                 reinterpret_cast<const T*>(x.data), reinterpret_cast<T*>(out.data),
                                 static_cast<std::size_t>(j.shape[0]));
        return;
    }
    run_rows(&strided_binary_task<T>, j, sizeof(T));
}

template void relu_strided<float>(int, const std::ptrdiff_t*, View, View);
template void relu_strided<double>(int, const std::ptrdiff_t*, View, View);
template void relu_backward_strided<float>(int, const std::ptrdiff_t*, View, View, View);
template void relu_backward_strided<double>(int, const std::ptrdiff_t*, View, View, View);

const char* simd_level() {
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return "avx512f";
    if (__builtin_cpu_supports("avx2")) return "avx2";
#endif
    return "baseline";
}

}  // namespace relu_kernel
