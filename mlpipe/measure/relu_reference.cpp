// References for the relu_module benchmark (mlpipe.measure.relu_bench), built at bench time with
// the interpreter's compiler and pybind11: the original course project's kernel
// (list -> std::vector<double> -> list) and a multi-thread streaming copy, the practical
// memory-bandwidth ceiling. They are references, not part of relu_module's API.
#include <emmintrin.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cstdint>
#include <thread>
#include <vector>
namespace py = pybind11;

std::vector<double> relu_original(const std::vector<double>& x) {
    std::vector<double> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = x[i] > 0 ? x[i] : 0.0;
    return y;
}

static void stream_copy_part(const char* src, char* dst, std::size_t bytes) {
    std::size_t i = 0;
    while (i < bytes && (reinterpret_cast<std::uintptr_t>(dst + i) & 15u)) {
        dst[i] = src[i];
        ++i;
    }
    for (; i + 64 <= bytes; i += 64) {
        __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
        __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
        __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
        __m128i d = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
        _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
    }
    for (; i < bytes; ++i) dst[i] = src[i];
    _mm_sfence();
}

void stream_copy(py::array src, py::array dst, int threads) {
    const char* s = static_cast<const char*>(src.data());
    char* d = static_cast<char*>(dst.mutable_data());
    std::size_t bytes = static_cast<std::size_t>(src.nbytes());
    py::gil_scoped_release nogil;
    std::vector<std::thread> pool;
    std::size_t per = (bytes / threads) & ~std::size_t(63);
    for (int t = 1; t < threads; ++t) {
        std::size_t b = per * t, e = t + 1 == threads ? bytes : per * (t + 1);
        pool.emplace_back(stream_copy_part, s + b, d + b, e - b);
    }
    stream_copy_part(s, d, threads > 1 ? per : bytes);
    for (auto& th : pool) th.join();
}

PYBIND11_MODULE(relu_bench_refs, m) {
    m.def("relu_original", &relu_original, "The original design: list -> vector -> list.");
    m.def("stream_copy", &stream_copy, "Copy with non-temporal stores on `threads` threads.");
}
