// CUDA image preprocessing, fused: uint8 RGB image (H, W, 3) on the device -> normalised tiles (n, 3, S, S) in
// float32 / float16 / bfloat16, bit-identical to preprocess.cpp and PIL (rules in preprocess.h). Plain CUDA C++,
// extern "C" launchers, no torch headers: built by setup.py with nvcc into hovle/kernels/_preprocess_cuda.so and called
// through ctypes by hovle/kernels/preprocess.py. One thread block per (tile, band of output rows, chunk of output
// columns) runs the first 1-D pass over just the source window its outputs read into shared memory (global
// scratch when even one row's window is too large), then the second pass straight into the output. The 22-bit
// weights come from the host (the CPU path's code), one upload per call.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "preprocess.h"

namespace hovle {
namespace {

constexpr int kThreads = 256;
constexpr int kChunkCols = 64;            // output columns per block
constexpr int kMaxBand = 32;              // output rows per block, halved until the window fits shared memory
constexpr size_t kSmemBytes = 40 * 1024;  // + the 3 KiB table: under the 48 KiB a block gets without opt-in

struct DevCoeffs {
  const int32_t *start, *count, *weight;
  int ksize;
};

struct DevResample {
  DevCoeffs h, v;
  int vertical_first;
};

struct Params {
  const uint8_t* image;
  int width, cols, grid_tiles, size, band;
  DevResample main, thumb;
  void* out;
  int dtype;
  uint8_t* scratch;  // null: the window buffer lives in shared memory
  size_t scratch_per_block;
};

// One block's share of the work: output window and the source window of its first pass.
struct Block {
  const DevResample* r;
  int tile, row0, col0, ny, nx;  // tile-local output rows [row0, row0 + ny), columns [col0, col0 + nx)
  int oy0, ox0;                  // the same, in the resized image
  int first, span;  // first pass: source rows [first, first + span) (horizontal first) or columns (vertical first)
};

HOVLE_HD Block block_of(const Params& p, int bx, int by, int tile) {
  Block b;
  const bool thumb = tile >= p.grid_tiles;
  b.r = thumb ? &p.thumb : &p.main;
  b.tile = tile;
  b.row0 = by * p.band;
  b.col0 = bx * kChunkCols;
  b.ny = p.size - b.row0 < p.band ? p.size - b.row0 : p.band;
  b.nx = p.size - b.col0 < kChunkCols ? p.size - b.col0 : kChunkCols;
  b.oy0 = (thumb ? 0 : tile / p.cols * p.size) + b.row0;
  b.ox0 = (thumb ? 0 : tile % p.cols * p.size) + b.col0;
  const DevCoeffs& c = b.r->vertical_first ? b.r->h : b.r->v;  // window starts/ends are non-decreasing
  const int o0 = b.r->vertical_first ? b.ox0 : b.oy0, o1 = o0 + (b.r->vertical_first ? b.nx : b.ny) - 1;
  b.first = c.start[o0];
  b.span = c.start[o1] + c.count[o1] - b.first;
  return b;
}

// Items of the first pass: buf is (span, nx, 3) for horizontal-first, (ny, span, 3) for vertical-first.
HOVLE_HD int first_pass_items(const Block& b) { return b.span * (b.r->vertical_first ? b.ny : b.nx); }

// acc[c] = 0.5 + sum_j w[j] * px[j * step + c]: one output pixel of a 1-D pass, PIL's int32 fixed point.
HOVLE_HD void weigh(const uint8_t* px, size_t step, const int32_t* w, int taps, int32_t acc[3]) {
  acc[0] = acc[1] = acc[2] = kHalf;
  for (int j = 0; j < taps; ++j) {
    for (int c = 0; c < 3; ++c) acc[c] += w[j] * px[j * step + c];
  }
}

HOVLE_HD void first_pass(const Params& p, const Block& b, int i, uint8_t* buf) {
  const size_t row_bytes = static_cast<size_t>(p.width) * 3;
  int32_t acc[3];
  if (!b.r->vertical_first) {  // horizontal pass of source row first + i / nx, output column ox0 + i % nx
    const DevCoeffs& h = b.r->h;
    const int o = b.ox0 + i % b.nx;
    const uint8_t* px = p.image + (b.first + i / b.nx) * row_bytes + static_cast<size_t>(h.start[o]) * 3;
    weigh(px, 3, h.weight + static_cast<size_t>(o) * h.ksize, h.count[o], acc);
  } else {  // vertical pass of source column first + i % span, output row oy0 + i / span
    const DevCoeffs& v = b.r->v;
    const int o = b.oy0 + i / b.span;
    const uint8_t* px = p.image + v.start[o] * row_bytes + static_cast<size_t>(b.first + i % b.span) * 3;
    weigh(px, row_bytes, v.weight + static_cast<size_t>(o) * v.ksize, v.count[o], acc);
  }
  for (int c = 0; c < 3; ++c) buf[static_cast<size_t>(i) * 3 + c] = clip8(acc[c]);
}

// Second pass for output pixel (row0 + i / nx, col0 + i % nx) of the tile, normalised through lut and stored.
HOVLE_HD void second_pass(const Params& p, const Block& b, int i, const uint8_t* buf, const uint32_t* lut) {
  const int y = i / b.nx, x = i % b.nx;
  int32_t acc[3];
  if (!b.r->vertical_first) {  // vertical pass down column x of buf
    const DevCoeffs& v = b.r->v;
    const int o = b.oy0 + y;
    const uint8_t* px = buf + (static_cast<size_t>(v.start[o] - b.first) * b.nx + x) * 3;
    weigh(px, static_cast<size_t>(b.nx) * 3, v.weight + static_cast<size_t>(o) * v.ksize, v.count[o], acc);
  } else {  // horizontal pass along row y of buf
    const DevCoeffs& h = b.r->h;
    const int o = b.ox0 + x;
    const uint8_t* px = buf + (static_cast<size_t>(y) * b.span + h.start[o] - b.first) * 3;
    weigh(px, 3, h.weight + static_cast<size_t>(o) * h.ksize, h.count[o], acc);
  }
  const size_t plane = static_cast<size_t>(p.size) * p.size;
  const size_t at = static_cast<size_t>(b.tile) * 3 * plane + static_cast<size_t>(b.row0 + y) * p.size + b.col0 + x;
  for (int c = 0; c < 3; ++c) {
    const uint32_t bits = lut[c * 256 + clip8(acc[c])];
    if (p.dtype == kFloat32) {
      static_cast<uint32_t*>(p.out)[at + c * plane] = bits;
    } else {
      static_cast<uint16_t*>(p.out)[at + c * plane] = static_cast<uint16_t>(bits);
    }
  }
}

__global__ void __launch_bounds__(kThreads) preprocess_kernel(Params p) {
  extern __shared__ uint8_t smem[];
  __shared__ uint32_t lut[3 * 256];
  for (int i = threadIdx.x; i < 3 * 256; i += blockDim.x) lut[i] = output_bits(i % 256, i / 256, p.dtype);
  const Block b = block_of(p, blockIdx.x, blockIdx.y, blockIdx.z);
  const size_t block_id = blockIdx.x + gridDim.x * (blockIdx.y + static_cast<size_t>(gridDim.y) * blockIdx.z);
  uint8_t* buf = p.scratch ? p.scratch + p.scratch_per_block * block_id : smem;
  for (int i = threadIdx.x; i < first_pass_items(b); i += blockDim.x) first_pass(p, b, i, buf);
  __syncthreads();  // buf and lut complete
  for (int i = threadIdx.x; i < b.ny * b.nx; i += blockDim.x) second_pass(p, b, i, buf, lut);
}

// Bytes of the largest first-pass buffer among r's blocks, with bands of `band` rows: source rows x chunk columns
// for horizontal-first, band rows x source columns for vertical-first.
size_t window_bytes(const Resample& r, int band, int size, int region_w, int region_h) {
  const Coeffs& c = r.vertical_first ? r.h : r.v;
  const int region = r.vertical_first ? region_w : region_h, step = r.vertical_first ? kChunkCols : band;
  const size_t across = r.vertical_first ? band : kChunkCols;
  size_t most = 0;
  for (int o0 = 0; o0 < region; o0 += size) {  // each tile's outputs, then blocks of `step` within the tile
    for (int k = 0; k < size; k += step) {
      const int first = o0 + k, last = o0 + std::min(size, k + step) - 1;
      most = std::max(most, (c.start[last] + c.count[last] - c.start[first]) * across * 3);
    }
  }
  return most;
}

// Appends r's arrays (h then v: start, count, weight) to blob; returns where they begin.
size_t pack(const Resample& r, std::vector<int32_t>& blob) {
  const size_t at = blob.size();
  for (const Coeffs* c : {&r.h, &r.v}) {
    blob.insert(blob.end(), c->start.begin(), c->start.end());
    blob.insert(blob.end(), c->count.begin(), c->count.end());
    blob.insert(blob.end(), c->weight.begin(), c->weight.end());
  }
  return at;
}

// r's arrays inside a copy of blob that starts at `blob`.
DevResample on_device(const Resample& r, const int32_t* blob, size_t at) {
  DevResample d;
  const int32_t* p = blob + at;
  DevCoeffs* dst[2] = {&d.h, &d.v};
  const Coeffs* src[2] = {&r.h, &r.v};
  for (int k = 0; k < 2; ++k) {
    const size_t n = src[k]->start.size();
    *dst[k] = DevCoeffs{p, p + n, p + 2 * n, src[k]->ksize};
    p += 2 * n + src[k]->weight.size();
  }
  d.vertical_first = r.vertical_first;
  return d;
}

// Everything about a call that does not touch the device: coefficients, band height, window size, grid.
struct Plan {
  Resample main, thumb;
  size_t main_at = 0, thumb_at = 0;  // offsets of their arrays in blob
  bool has_thumb = false, in_smem = true;
  int band = kMaxBand, grid_tiles = 0;
  size_t window = 0;  // bytes of one block's first-pass buffer
  dim3 grid;
  std::vector<int32_t> blob;  // all coefficient arrays, packed for one upload
};

Plan make_plan(int height, int width, int cols, int rows, bool use_thumbnail, int size, bool pillow13_order) {
  Plan pl;
  const Tiling tiling{cols, rows, size, use_thumbnail};
  pl.has_thumb = tiling.num_tiles() > tiling.grid_tiles();
  pl.grid_tiles = tiling.grid_tiles();
  pl.main = make_resample(width, height, size * cols, size * rows, pillow13_order);
  if (pl.has_thumb) pl.thumb = make_resample(width, height, size, size, pillow13_order);
  auto need = [&](int band) {
    const size_t n = window_bytes(pl.main, band, size, size * cols, size * rows);
    return pl.has_thumb ? std::max(n, window_bytes(pl.thumb, band, size, size, size)) : n;
  };
  while (pl.band > 1 && need(pl.band) > kSmemBytes) pl.band /= 2;
  pl.in_smem = need(pl.band) <= kSmemBytes;
  if (!pl.in_smem) pl.band = kMaxBand;  // too large for shared memory at any band: global scratch per block
  pl.window = need(pl.band);
  pl.grid = dim3((size + kChunkCols - 1) / kChunkCols, (size + pl.band - 1) / pl.band, tiling.num_tiles());
  pl.main_at = pack(pl.main, pl.blob);
  if (pl.has_thumb) pl.thumb_at = pack(pl.thumb, pl.blob);
  return pl;
}

Params params_of(const Plan& pl, const void* image, int width, int cols, int size, const int32_t* blob, void* out,
                 int dtype, uint8_t* scratch) {
  Params p;
  p.image = static_cast<const uint8_t*>(image);
  p.width = width;
  p.cols = cols;
  p.grid_tiles = pl.grid_tiles;
  p.size = size;
  p.band = pl.band;
  p.main = on_device(pl.main, blob, pl.main_at);
  p.thumb = pl.has_thumb ? on_device(pl.thumb, blob, pl.thumb_at) : p.main;
  p.out = out;
  p.dtype = dtype;
  p.scratch = scratch;
  p.scratch_per_block = pl.window;
  return p;
}

int fail(char* err, size_t err_len, const char* what, cudaError_t e) {
  if (err && err_len) std::snprintf(err, err_len, "%s: %s", what, cudaGetErrorString(e));
  return 1;
}

}  // namespace
}  // namespace hovle

// 0 when a CUDA device can be used by this library (its runtime is linked statically, so this also checks that
// the driver is new enough for it); otherwise 1 and a message in err.
extern "C" int hovle_cuda_check(char* err, size_t err_len) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e == cudaSuccess && count == 0) e = cudaErrorNoDevice;
  return e == cudaSuccess ? 0 : hovle::fail(err, err_len, "cudaGetDeviceCount", e);
}

// image: device pointer to a C-contiguous uint8 (height, width, 3) image. out: device pointer to a contiguous
// (n, 3, size, size) tensor of dtype code 0 float32, 1 float16, 2 bfloat16, n = cols * rows (+1 thumbnail when
// use_thumbnail and cols * rows != 1). Work is queued on `stream` (a cudaStream_t); returns 0, or 1 with a
// message in err. Arguments are validated by the Python wrapper.
extern "C" int hovle_preprocess_cuda(const void* image, int height, int width, int cols, int rows, int use_thumbnail,
                                     int size, int pillow13_order, void* out, int dtype, int device, void* stream,
                                     char* err, size_t err_len) {
  using namespace hovle;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return fail(err, err_len, "cudaSetDevice", e);
  const Plan pl = make_plan(height, width, cols, rows, use_thumbnail != 0, size, pillow13_order != 0);
  int32_t* blob = nullptr;
  uint8_t* scratch = nullptr;
  const size_t scratch_bytes = pl.in_smem ? 0 : pl.window * pl.grid.x * pl.grid.y * pl.grid.z;
  if ((e = cudaMallocAsync(reinterpret_cast<void**>(&blob), pl.blob.size() * sizeof(int32_t), s)) != cudaSuccess)
    return fail(err, err_len, "cudaMallocAsync (coefficients)", e);
  // Pageable source: the call returns once the data is staged, so pl.blob may be freed when this function returns.
  e = cudaMemcpyAsync(blob, pl.blob.data(), pl.blob.size() * sizeof(int32_t), cudaMemcpyHostToDevice, s);
  if (e == cudaSuccess && scratch_bytes) e = cudaMallocAsync(reinterpret_cast<void**>(&scratch), scratch_bytes, s);
  if (e == cudaSuccess) {
    const Params p = params_of(pl, image, width, cols, size, blob, out, dtype, scratch);
    preprocess_kernel<<<pl.grid, kThreads, pl.in_smem ? pl.window : 0, s>>>(p);
    e = cudaGetLastError();
  }
  const cudaError_t e_free = cudaFreeAsync(blob, s);
  if (scratch) cudaFreeAsync(scratch, s);
  if (e != cudaSuccess) return fail(err, err_len, "preprocess launch", e);
  if (e_free != cudaSuccess) return fail(err, err_len, "cudaFreeAsync", e_free);
  return 0;
}

// The kernel's own block functions run serially on the host with host pointers, so tests can check its indexing
// and window sizing without a GPU. Returns 1 if a block's window would overflow the buffer the launcher sizes.
extern "C" int hovle_preprocess_cuda_emulated(const void* image, int height, int width, int cols, int rows,
                                              int use_thumbnail, int size, int pillow13_order, void* out, int dtype) {
  using namespace hovle;
  const Plan pl = make_plan(height, width, cols, rows, use_thumbnail != 0, size, pillow13_order != 0);
  std::vector<uint8_t> buf(pl.window);
  const Params p = params_of(pl, image, width, cols, size, pl.blob.data(), out, dtype, nullptr);
  uint32_t lut[3 * 256];
  for (int i = 0; i < 3 * 256; ++i) lut[i] = output_bits(i % 256, i / 256, dtype);
  for (unsigned z = 0; z < pl.grid.z; ++z) {
    for (unsigned y = 0; y < pl.grid.y; ++y) {
      for (unsigned x = 0; x < pl.grid.x; ++x) {
        const Block b = block_of(p, x, y, z);
        if (static_cast<size_t>(first_pass_items(b)) * 3 > pl.window) return 1;
        for (int i = 0; i < first_pass_items(b); ++i) first_pass(p, b, i, buf.data());
        for (int i = 0; i < b.ny * b.nx; ++i) second_pass(p, b, i, buf.data(), lut);
      }
    }
  }
  return 0;
}
