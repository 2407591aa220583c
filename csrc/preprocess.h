// Shared by preprocess.cpp (CPU) and preprocess_cuda.cu (CUDA): the resampling coefficients, the fixed-point
// rounding, the ImageNet normalisation and the float -> half conversions, so both paths round identically.
//
// The resize is PIL's antialiased separable convolution (Image.resize with BICUBIC), reimplemented from its
// description: for output i of a 1-D pass with scale = in / out, center = (i + 0.5) * scale, support =
// 2 * max(scale, 1); taps j in [center - support, center + support) (rounded, clipped to the input) weigh
// cubic((j - center + 0.5) / max(scale, 1)) with a = -0.5, normalised to sum 1, then stored as integers with
// 22 fractional bits. Each pass (horizontal first, then vertical) sums uint8 * weight in int32 from 0.5 and
// rounds back to uint8 with clipping, exactly as PIL does for 8-bit images.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__CUDACC__)
#define HOVLE_HD __host__ __device__ __forceinline__
#else
#define HOVLE_HD inline
#endif

namespace hovle {

constexpr int kPrecisionBits = 22;  // PIL's 32 - 8 - 2: headroom for 8-bit data times weights summing to ~1.3
constexpr int32_t kHalf = 1 << (kPrecisionBits - 1);

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// One 1-D resampling in_size -> out_size: output o reads inputs [start[o], start[o] + count[o]) with weights
// weight[o * ksize + j]. start and start + count are non-decreasing in o.
struct Coeffs {
  int in_size = 0, out_size = 0, ksize = 0;
  std::vector<int32_t> start, count, weight;
};

inline double bicubic(double x) {
  const double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

// Doubles all the way and the same operation order as PIL, so the rounded integer weights are identical.
inline Coeffs make_coeffs(int in_size, int out_size) {
  Coeffs c;
  c.in_size = in_size;
  c.out_size = out_size;
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = 2.0 * filterscale;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.start.resize(out_size);
  c.count.resize(out_size);
  c.weight.assign(static_cast<size_t>(out_size) * c.ksize, 0);
  std::vector<double> w(c.ksize);
  for (int o = 0; o < out_size; ++o) {
    const double center = (o + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int lo = static_cast<int>(center - support + 0.5);  // truncation toward zero, as PIL's (int) cast
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int n = hi - lo;
    double total = 0.0;
    for (int j = 0; j < n; ++j) {
      w[j] = bicubic((j + lo - center + 0.5) * ss);
      total += w[j];
    }
    for (int j = 0; j < n; ++j) {
      const double k = total != 0.0 ? w[j] / total : w[j];
      const double fixed = k * (1 << kPrecisionBits);
      c.weight[static_cast<size_t>(o) * c.ksize + j] = static_cast<int32_t>(k < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    c.start[o] = lo;
    c.count[o] = n;
  }
  return c;
}

HOVLE_HD uint8_t clip8(int32_t acc) {
  const int32_t v = acc >> kPrecisionBits;  // arithmetic shift: floor, like PIL
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// torchvision ToTensor + Normalize in float32: (v / 255 - mean) / std, each op rounded to float32 (no FMA).
HOVLE_HD float normalize(int v, int c) {
  // float(double): the same rounding as torch.tensor(IMAGENET_MEAN, dtype=torch.float32)
  const float mean = static_cast<float>(c == 0 ? 0.485 : (c == 1 ? 0.456 : 0.406));
  const float stdv = static_cast<float>(c == 0 ? 0.229 : (c == 1 ? 0.224 : 0.225));
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(__fsub_rn(__fdiv_rn(static_cast<float>(v), 255.0f), mean), stdv);
#else
  return (static_cast<float>(v) / 255.0f - mean) / stdv;  // no multiply, so nothing can fuse into an FMA
#endif
}

HOVLE_HD uint32_t float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}

// float32 -> IEEE binary16, round to nearest even (subnormals, overflow to inf, NaN kept quiet).
HOVLE_HD uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x0200u : 0u));
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax >= 0x38800000u) {                                               // normal half: rebias, round 13 bits
    const uint32_t r = ax - 0x38000000u;
    return static_cast<uint16_t>(sign | ((r + 0x0fffu + ((r >> 13) & 1u)) >> 13));
  }
  const int e = static_cast<int>(ax >> 23);
  if (e < 102) return static_cast<uint16_t>(sign);  // below half the smallest subnormal (2^-25): zero
  const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  const int shift = 126 - e;  // 14..24: mantissa units of 2^-24
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), halfway = 1u << (shift - 1);
  if (rem > halfway || (rem == halfway && (q & 1u))) ++q;
  return static_cast<uint16_t>(sign | q);
}

// float32 -> bfloat16, round to nearest even.
HOVLE_HD uint16_t float_to_bfloat16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

// The output value, as its bit pattern in the run dtype, for pixel value v of channel c.
HOVLE_HD uint32_t output_bits(int v, int c, int dtype) {
  const float f = normalize(v, c);
  if (dtype == kFloat16) return float_to_half(f);
  if (dtype == kBFloat16) return float_to_bfloat16(f);
  return float_bits(f);
}

// PIL's pass order. Up to Pillow 12 the horizontal pass always runs first; Pillow 13 runs the vertical pass first
// when the height shrinks by more than twice as many pixels as the width does (measured against Pillow, see
// tests/test_native_preprocess.py). The order changes the intermediate uint8 rounding, so it must match.
HOVLE_HD bool vertical_first(int in_w, int in_h, int out_w, int out_h, bool pillow13_order) {
  return pillow13_order && out_h < in_h && int64_t{in_h} - out_h > 2 * (int64_t{in_w} - out_w);
}

// One PIL resize of the whole image: its two 1-D passes and their order.
struct Resample {
  Coeffs h, v;
  bool vertical_first = false;
};

inline Resample make_resample(int in_w, int in_h, int out_w, int out_h, bool pillow13_order) {
  Resample r;
  r.h = make_coeffs(in_w, out_w);
  r.v = make_coeffs(in_h, out_h);
  r.vertical_first = vertical_first(in_w, in_h, out_w, out_h, pillow13_order);
  return r;
}

// The tiling decision, validated by the callers: cols x rows tiles of size x size cut from the image resized to
// (size * cols, size * rows), plus the whole image resized to size x size when thumbnail and cols * rows != 1.
struct Tiling {
  int cols, rows, size;
  bool thumbnail;
  int grid_tiles() const { return cols * rows; }
  int num_tiles() const { return cols * rows + ((thumbnail && cols * rows != 1) ? 1 : 0); }
};

// The CPU implementation (preprocess.cpp), called by the pybind11 module (module.cpp) with arguments it has
// validated: image C-contiguous (height, width, 3) uint8, out contiguous (tiling.num_tiles(), 3, size, size) of
// `dtype`. Runs on min(num_threads or every usable CPU, work items) threads; returns the number used.
struct CpuRequest {
  const uint8_t* image;
  int height, width;
  Tiling tiling;
  void* out;
  int dtype;
  bool pillow13_order;
  int num_threads;  // <= 0: every usable CPU
};

int preprocess_cpu(const CpuRequest& req);
int hardware_threads();

}  // namespace hovle
