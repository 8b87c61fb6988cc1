// Pillow's Image.resize (BILINEAR or BICUBIC, 8 bits per channel) followed
// by a crop, computed for the crop's pixels only, with the same integer
// arithmetic, so that the result is Pillow's bit for bit.
//
// Pillow (src/libImaging/Resample.c) resamples in two passes: horizontally
// into a temporary image clipped to 8 bits, then vertically. Each pass
// computes its filter weights in double precision, normalizes them to sum
// to 1, and rounds them to fixed point with PRECISION_BITS fractional bits;
// an output is the clipped sum of weight * pixel plus one half. This file
// keeps those steps and their order, and changes only the memory layout:
// the horizontal pass runs on a transposed copy of the rows it needs, so
// that both passes become sums of contiguous rows, which the compiler
// vectorizes. Outputs outside the crop are never computed: each depends
// only on its own taps.
//
// Build: with -ffp-contract=off, so that the weights' double arithmetic is
// not fused into FMAs, as in Pillow's x86-64 wheels (built for baseline
// x86-64, which has no FMA); the library uses this file on x86-64 only.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

#if defined(__x86_64__) && !defined(__clang__) && __GNUC__ >= 11
#define RESAMPLE_CLONES \
  __attribute__((target_clones("default", "avx2", "arch=x86-64-v4")))
#else
#define RESAMPLE_CLONES
#endif

double BilinearFilter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double BicubicFilter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for a whole-image
// resize (box 0..in_size): per output, its first input and tap count, and
// ksize fixed-point weights.
struct Weights {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
};

Weights Precompute(int in_size, int out_size, int filter) {
  double (*fn)(double) = filter == 3 ? BicubicFilter : BilinearFilter;
  const double support_unit = filter == 3 ? 2.0 : 1.0;
  const float in0 = 0.0f, in1 = static_cast<float>(in_size);
  double filterscale, scale;
  filterscale = scale = static_cast<double>(in1 - in0) / out_size;
  if (filterscale < 1.0) filterscale = 1.0;
  const double support = support_unit * filterscale;
  Weights w;
  w.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  w.first.resize(out_size);
  w.count.resize(out_size);
  w.k.assign(static_cast<size_t>(out_size) * w.ksize, 0);
  std::vector<double> kk(w.ksize);
  const double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    int x = 0;
    for (; x < xmax; ++x) {
      const double v = fn((x + xmin - center + 0.5) * inv_filterscale);
      kk[x] = v;
      ww += v;
    }
    if (ww != 0.0) {
      for (x = 0; x < xmax; ++x) kk[x] /= ww;
    }
    for (; x < w.ksize; ++x) kk[x] = 0;
    for (x = 0; x < w.ksize; ++x) {
      const double p = kk[x];
      w.k[static_cast<size_t>(xx) * w.ksize + x] = static_cast<int32_t>(
          p < 0 ? -0.5 + p * (1 << kPrecisionBits)
                : 0.5 + p * (1 << kPrecisionBits));
    }
    w.first[xx] = xmin;
    w.count[xx] = xmax;
  }
  return w;
}

// Pillow's clip8: the sum's integer part, clamped to 0..255.
inline uint8_t Clip8(int32_t v) {
  const int32_t i = v >> kPrecisionBits;
  return static_cast<uint8_t>(i < 0 ? 0 : (i > 255 ? 255 : i));
}

// Per-thread scratch buffers, kept between calls: a fresh allocation of
// this size would be zeroed, page by page, on every image. Buffers over
// kKeepBytes are freed at the end of a call (see TrimScratch).
enum Scratch { kSrcT, kDstT, kAcc, kMid, kLines, kRgb, kMean, kStd, kCount };
constexpr size_t kKeepBytes = size_t{8} << 20;

std::vector<uint8_t>* ScratchBuffers() {
  thread_local std::vector<uint8_t> buffers[kCount];
  return buffers;
}

template <typename T>
T* ScratchBuffer(Scratch which, int64_t n) {
  std::vector<uint8_t>& buffer = ScratchBuffers()[which];
  const size_t bytes = static_cast<size_t>(n) * sizeof(T) + 64;
  if (buffer.size() < bytes) buffer.resize(bytes);
  // 64-byte aligned, for the vector loops.
  const uintptr_t address = reinterpret_cast<uintptr_t>(buffer.data());
  return reinterpret_cast<T*>((address + 63) & ~uintptr_t{63});
}

void TrimScratch() {
  std::vector<uint8_t>* buffers = ScratchBuffers();
  for (int i = 0; i < kCount; ++i) {
    if (buffers[i].size() > kKeepBytes) std::vector<uint8_t>().swap(buffers[i]);
  }
}

// out[j] = Clip8(1/2 + sum_t weights[t] * rows[t][j]) for j < n: one output
// line from `taps` input lines `stride` bytes apart. Both passes are this.
RESAMPLE_CLONES
void WeightedRows(const uint8_t* rows, int64_t stride, const int32_t* weights,
                  int taps, int64_t n, int32_t* acc, uint8_t* out) {
  for (int64_t j = 0; j < n; ++j) acc[j] = 1 << (kPrecisionBits - 1);
  for (int t = 0; t < taps; ++t) {
    const uint8_t* row = rows + t * stride;
    const int32_t k = weights[t];
    for (int64_t j = 0; j < n; ++j) acc[j] += static_cast<int32_t>(row[j]) * k;
  }
  for (int64_t j = 0; j < n; ++j) out[j] = Clip8(acc[j]);
}

// A pixel of 3 (RGB) or 4 (RGBX) bytes as one 32-bit word.
template <int kBpp>
inline uint32_t LoadPixel(const uint8_t* p) {
  uint32_t v;
  if constexpr (kBpp == 4) {
    std::memcpy(&v, p, 4);
  } else {
    v = p[0] | (static_cast<uint32_t>(p[1]) << 8) |
        (static_cast<uint32_t>(p[2]) << 16);
  }
  return v;
}

// dst[c * rows + r] = pixel (r, c) of `src` (`rows` x `cols` pixels of
// kBpp bytes, lines `stride` bytes apart), in blocks that stay in cache.
template <int kBpp>
void TransposePixels(const uint8_t* src, int64_t stride, int64_t rows,
                     int64_t cols, uint32_t* dst) {
  constexpr int64_t kBlock = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += kBlock) {
    const int64_t r1 = std::min(rows, r0 + kBlock);
    for (int64_t c0 = 0; c0 < cols; c0 += kBlock) {
      const int64_t c1 = std::min(cols, c0 + kBlock);
      for (int64_t r = r0; r < r1; ++r) {
        const uint8_t* line = src + r * stride;
        for (int64_t c = c0; c < c1; ++c) {
          dst[c * rows + r] = LoadPixel<kBpp>(line + c * kBpp);
        }
      }
    }
  }
}

void TransposePixels(const uint8_t* src, int64_t stride, int bpp,
                     int64_t rows, int64_t cols, uint32_t* dst) {
  if (bpp == 4) {
    TransposePixels<4>(src, stride, rows, cols, dst);
  } else {
    TransposePixels<3>(src, stride, rows, cols, dst);
  }
}

// The horizontal pass: output columns [x0, x0 + nx) of `rows` lines of
// `src` (`bpp`-byte pixels, lines `stride` bytes apart, its first pixel
// being input column src_first), into `dst` (packed 4-byte pixels, nx a
// line). Strips of kStrip lines are transposed, so that each output column
// is a weighted sum of contiguous input columns, and transposed back.
void HorizontalPass(const uint8_t* src, int64_t stride, int bpp,
                    int64_t src_first, int64_t rows, const Weights& w,
                    int64_t x0, int64_t nx, uint8_t* dst) {
  constexpr int64_t kStrip = 64;
  const int64_t col0 = w.first[x0];
  const int64_t cols = w.first[x0 + nx - 1] + w.count[x0 + nx - 1] - col0;
  const int64_t strip = std::min(rows, kStrip);
  uint32_t* src_t = ScratchBuffer<uint32_t>(kSrcT, cols * strip);
  uint32_t* dst_t = ScratchBuffer<uint32_t>(kDstT, nx * strip);
  int32_t* acc = ScratchBuffer<int32_t>(kAcc, strip * 4);
  const auto* in_t = reinterpret_cast<const uint8_t*>(src_t);
  auto* out_t = reinterpret_cast<uint8_t*>(dst_t);
  for (int64_t r0 = 0; r0 < rows; r0 += strip) {
    const int64_t height = std::min(strip, rows - r0);
    const int64_t n = height * 4;  // Bytes in a transposed line.
    TransposePixels(src + r0 * stride + (col0 - src_first) * bpp, stride, bpp,
                    height, cols, src_t);
    for (int64_t x = 0; x < nx; ++x) {
      const int64_t xx = x0 + x;
      WeightedRows(in_t + (w.first[xx] - col0) * n, n,
                   w.k.data() + xx * w.ksize, w.count[xx], n, acc,
                   out_t + x * n);
    }
    TransposePixels(out_t, n, 4, nx, height,
                    reinterpret_cast<uint32_t*>(dst + r0 * nx * 4));
  }
}

// The vertical pass: output lines [y0, y0 + ny) from `src` (line r at
// src + (r - src_first) * stride), `n` bytes of each, into `dst` (packed).
void VerticalPass(const uint8_t* src, int64_t stride, int64_t src_first,
                  const Weights& w, int64_t y0, int64_t ny, int64_t n,
                  uint8_t* dst) {
  int32_t* acc = ScratchBuffer<int32_t>(kAcc, n);
  for (int64_t y = 0; y < ny; ++y) {
    const int64_t yy = y0 + y;
    WeightedRows(src + (w.first[yy] - src_first) * stride, stride,
                 w.k.data() + yy * w.ksize, w.count[yy], n, acc,
                 dst + y * n);
  }
}

// The crop (`lines` x `width` pixels of `bpp` bytes) as packed RGB: uint8,
// or, with `mean_std` (mean[3], std[3]), float32 (v / 255 - mean) / std,
// the operations of the library's `normalize` in its order.
void Emit(const uint8_t* src, int64_t stride, int bpp, int64_t lines,
          int64_t width, const float* mean_std, void* out) {
  const int64_t n = width * 3;
  uint8_t* rgb = ScratchBuffer<uint8_t>(kRgb, n);
  float* mean = ScratchBuffer<float>(kMean, n);
  float* std_ = ScratchBuffer<float>(kStd, n);
  if (mean_std != nullptr) {
    for (int64_t j = 0; j < n; ++j) {
      mean[j] = mean_std[j % 3];
      std_[j] = mean_std[3 + j % 3];
    }
  }
  for (int64_t y = 0; y < lines; ++y) {
    const uint8_t* p = src + y * stride;
    uint8_t* line = mean_std == nullptr ? static_cast<uint8_t*>(out) + y * n
                                        : rgb;
    if (bpp == 3) {
      std::memcpy(line, p, n);
    } else {
      for (int64_t x = 0; x < width; ++x) {
        line[3 * x] = p[4 * x];
        line[3 * x + 1] = p[4 * x + 1];
        line[3 * x + 2] = p[4 * x + 2];
      }
    }
    if (mean_std == nullptr) continue;
    float* o = static_cast<float*>(out) + y * n;
    for (int64_t j = 0; j < n; ++j) {
      float v = static_cast<float>(line[j]);
      v /= 255.0f;
      v -= mean[j];
      v /= std_[j];
      o[j] = v;
    }
  }
}


// Resizes the image `in` (in_h x in_w pixels of in_bpp bytes: 3 for RGB, 4
// for RGBX; lines in_stride bytes apart) to out_h x out_w as Pillow's
// Image.resize(filter), and writes the crop [top, top + crop_h) x
// [left, left + crop_w) into `out` as packed RGB: uint8, or float32
// normalized where `mean_std` is given (see Emit).
// filter: 2 bilinear, 3 bicubic (Pillow's numbers). order: which pass
// Pillow runs first: 0 always the horizontal one (Pillow 12 and older), 1 the
// vertical one where the height shrinks by more than twice as many pixels
// as the width (Pillow 13). Returns 0, or -1 for an argument outside these
// rules.
int ResizeCrop(const uint8_t* in, int64_t in_h, int64_t in_w,
               int64_t in_stride, int in_bpp, int64_t out_h, int64_t out_w,
               int64_t top, int64_t left, int64_t crop_h, int64_t crop_w,
               int filter, int order, const float* mean_std, void* out) {
  if ((filter != 2 && filter != 3) || (order != 0 && order != 1) ||
      (in_bpp != 3 && in_bpp != 4) || in_h < 1 || in_w < 1 || out_h < 1 ||
      out_w < 1 || top < 0 || left < 0 || crop_h < 1 || crop_w < 1 ||
      top + crop_h > out_h || left + crop_w > out_w ||
      in_stride < in_w * in_bpp || in_h > (1 << 24) || in_w > (1 << 24) ||
      out_h > (1 << 24) || out_w > (1 << 24)) {
    return -1;
  }
  const bool horizontal = out_w != in_w;
  const bool vertical = out_h != in_h;
  const bool horizontal_first =
      order == 0 ||
      !(in_h - out_h > 0 && in_h - out_h > (in_w - out_w) * 2);
  Weights wh, wv;
  if (horizontal) {
    wh = Precompute(static_cast<int>(in_w), static_cast<int>(out_w), filter);
  }
  if (vertical) {
    wv = Precompute(static_cast<int>(in_h), static_cast<int>(out_h), filter);
  }
  if (!horizontal && !vertical) {
    Emit(in + top * in_stride + left * in_bpp, in_stride, in_bpp, crop_h,
         crop_w, mean_std, out);
    return 0;
  }
  if (horizontal_first) {
    // The input lines the crop's vertical taps read.
    const int64_t row0 = vertical ? wv.first[top] : top;
    const int64_t rows =
        vertical ? wv.first[top + crop_h - 1] + wv.count[top + crop_h - 1] -
                       row0
                 : crop_h;
    const uint8_t* src = in + row0 * in_stride;
    if (!horizontal) {
      const int64_t n = crop_w * in_bpp;
      uint8_t* lines = ScratchBuffer<uint8_t>(kLines, crop_h * n);
      VerticalPass(src + left * in_bpp, in_stride, row0, wv, top, crop_h, n,
                   lines);
      Emit(lines, n, in_bpp, crop_h, crop_w, mean_std, out);
      return 0;
    }
    const int64_t n = crop_w * 4;
    uint8_t* mid = ScratchBuffer<uint8_t>(kMid, rows * n);
    HorizontalPass(src, in_stride, in_bpp, 0, rows, wh, left, crop_w, mid);
    if (!vertical) {
      Emit(mid, n, 4, crop_h, crop_w, mean_std, out);
      return 0;
    }
    uint8_t* lines = ScratchBuffer<uint8_t>(kLines, crop_h * n);
    VerticalPass(mid, n, row0, wv, top, crop_h, n, lines);
    Emit(lines, n, 4, crop_h, crop_w, mean_std, out);
    return 0;
  }
  // Vertical first (so `vertical` holds): the crop's lines, over the input
  // columns the crop's horizontal taps read.
  const int64_t col0 = horizontal ? wh.first[left] : left;
  const int64_t cols =
      horizontal ? wh.first[left + crop_w - 1] + wh.count[left + crop_w - 1] -
                       col0
                 : crop_w;
  const int64_t n = cols * in_bpp;
  uint8_t* mid = ScratchBuffer<uint8_t>(kMid, crop_h * n);
  VerticalPass(in + col0 * in_bpp, in_stride, 0, wv, top, crop_h, n, mid);
  if (!horizontal) {
    Emit(mid, n, in_bpp, crop_h, crop_w, mean_std, out);
    return 0;
  }
  uint8_t* lines = ScratchBuffer<uint8_t>(kLines, crop_h * crop_w * 4);
  HorizontalPass(mid, n, in_bpp, col0, crop_h, wh, left, crop_w, lines);
  Emit(lines, crop_w * 4, 4, crop_h, crop_w, mean_std, out);
  return 0;
}

}  // namespace

extern "C" {

// ResizeCrop, for ctypes; the call's large scratch buffers are freed after.
// Returns -2 where memory ran out (no C++ exception crosses into Python).
int resnext_resize_crop(const uint8_t* in, int64_t in_h, int64_t in_w,
                        int64_t in_stride, int in_bpp, int64_t out_h,
                        int64_t out_w, int64_t top, int64_t left,
                        int64_t crop_h, int64_t crop_w, int filter, int order,
                        const float* mean_std, void* out) {
  int status;
  try {
    status = ResizeCrop(in, in_h, in_w, in_stride, in_bpp, out_h, out_w, top,
                        left, crop_h, crop_w, filter, order, mean_std, out);
  } catch (...) {  // std::bad_alloc, std::length_error
    status = -2;
  }
  TrimScratch();
  return status;
}

}  // extern "C"
