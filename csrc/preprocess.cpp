// CPU image preprocessing, fused: uint8 RGB image (H, W, 3) -> normalised tiles (n, 3, S, S) in one pass, no
// full-size intermediate (bound to Python by module.cpp). Work items are (tile, band of output rows, chunk of
// output columns); PIL's weights depend only on the global scale, so an item that resamples just the source window
// its outputs read equals resizing the whole image and cropping. Per item (horizontal pass first): transpose the
// source window so each source column is a line of interleaved RGB; filter those lines into one line per output
// column; transpose back to rows; filter into one line per output row; normalise through a 3 x 256 table and
// de-interleave into (3, S, S). Both passes are one "weighted sum of whole lines" loop, vectorised along the line.
// Vertical-first items (Pillow 13) filter source rows first. Items run in order of their first source row.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "preprocess.h"

namespace hovle {
namespace {

// One build runs everywhere: GCC emits AVX-512, AVX2 and baseline copies and picks one at load time.
#if defined(__GNUC__) && __GNUC__ >= 11 && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HOVLE_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define HOVLE_CLONES
#endif

constexpr int kBand = 64, kChunk = 64;  // output rows and columns per work item
constexpr int kLine = 64;               // line elements accumulated at once (held in vector registers)

template <bool kFull>
inline void filter_block(const uint8_t* in, size_t stride, const int32_t* w, int taps, int n, uint8_t* out) {
  int32_t acc[kLine];
  const int m = kFull ? kLine : n;  // a constant trip count lets the compiler keep acc in registers
  for (int t = 0; t < m; ++t) acc[t] = kHalf;
  for (int j = 0; j < taps; ++j) {
    const int32_t wj = w[j];
    const uint8_t* p = in + j * stride;
    for (int t = 0; t < m; ++t) acc[t] += wj * p[t];
  }
  for (int t = 0; t < m; ++t) out[t] = clip8(acc[t]);
}

// out[i] = clip8(0.5 + sum_j w[j] * in[j * stride + i]) for i < len, in PIL's int32 fixed point. Reads only
// in[j * stride + i] for i < len.
HOVLE_CLONES void filter_line(const uint8_t* in, size_t stride, const int32_t* w, int taps, int len, uint8_t* out) {
  int i = 0;
  for (; i + kLine <= len; i += kLine) filter_block<true>(in + i, stride, w, taps, kLine, out + i);
  if (i < len) filter_block<false>(in + i, stride, w, taps, len - i, out + i);
}

// kRows source rows -> 3 * kRows consecutive bytes of dst lines x0..x1-1. Each copy's extra 4th byte lands where
// the next row writes next, or in the line's pad byte; from x4 on, 3-byte copies never read past the source.
template <int kRows>
inline void transpose_rows(const uint8_t* s, size_t src_stride, int x0, int x4, int x1, uint8_t* d, size_t dst_stride) {
  int x = x0;
  for (; x < x4; ++x) {
    uint32_t v[kRows];
    for (int k = 0; k < kRows; ++k) std::memcpy(&v[k], s + k * src_stride + x * 3, 4);
    for (int k = 0; k < kRows; ++k) std::memcpy(d + x * dst_stride + k * 3, &v[k], 4);
  }
  for (; x < x1; ++x) {
    for (int k = 0; k < kRows; ++k) std::memcpy(d + x * dst_stride + k * 3, s + k * src_stride + x * 3, 3);
  }
}

// dst[x * dst_stride + y * 3 + c] = src[y * src_stride + x * 3 + c]: pixel transpose of a rows x cols window;
// dst lines need one byte of padding (dst_stride >= 3 * rows + 1).
void transpose_pixels(const uint8_t* src, size_t src_stride, int rows, int cols, uint8_t* dst, size_t dst_stride) {
  constexpr int kCols = 256;  // source pixels per row segment: long enough to stream, few enough dst lines
  for (int x0 = 0; x0 < cols; x0 += kCols) {
    const int x1 = std::min(cols, x0 + kCols), x4 = std::min(x1, cols - 1);
    int y = 0;
    for (; y + 4 <= rows; y += 4) {
      transpose_rows<4>(src + y * src_stride, src_stride, x0, x4, x1, dst + 3 * y, dst_stride);
    }
    for (; y < rows; ++y) transpose_rows<1>(src + y * src_stride, src_stride, x0, x4, x1, dst + 3 * y, dst_stride);
  }
}

struct Buffer {  // grows, never zero-filled: every byte a pass reads was written by the pass before it
  std::unique_ptr<uint8_t[]> data;
  size_t size = 0;
  uint8_t* sized(size_t n) {  // + 4 bytes of slack for the 4-byte pixel copies
    if (n + 4 > size) data.reset(new uint8_t[size = n + 4]);
    return data.get();
  }
};

struct Scratch {
  Buffer a, b, c;
};

// Scratch outlives a call (up to 16 kept, a few MB each at most): fresh large allocations get page-faulted and
// zeroed by the OS on first touch, which costs as much as the arithmetic.
struct ScratchPool {
  std::mutex mutex;
  std::vector<std::unique_ptr<Scratch>> free;
};

ScratchPool& scratch_pool() {
  static ScratchPool* pool = new ScratchPool;  // never destroyed: no teardown-order issues at exit
  return *pool;
}

struct Job {
  CpuRequest req;
  Resample main, thumb;
  uint32_t lut[3][256];  // output bit pattern per (channel, uint8 value): float32 bits, or half / bf16 bits
  int bands, chunks;     // per tile: items are (tile, band of kBand output rows, chunk of kChunk columns)

  int items() const { return req.tiling.num_tiles() * bands * chunks; }
  const Resample& resample(int item) const {
    return item / (bands * chunks) >= req.tiling.grid_tiles() ? thumb : main;
  }
};

// One work item's output window and the source window it reads (both in resized-image / source coordinates).
struct Window {
  int tile, row0, col0, ny, nx;  // tile-local output rows [row0, row0 + ny), columns [col0, col0 + nx)
  int oy0, ox0;                  // the same rows / columns in the resized image
  int ry0, nry, rx0, nrx;        // source rows [ry0, ry0 + nry), columns [rx0, rx0 + nrx)
};

Window window_of(const Job& job, const Resample& r, int item) {
  const Tiling& tl = job.req.tiling;
  const int s = tl.size, per_tile = job.bands * job.chunks;
  Window w;
  w.tile = item / per_tile;
  w.row0 = item % per_tile / job.chunks * kBand;
  w.col0 = item % job.chunks * kChunk;
  w.ny = std::min(kBand, s - w.row0);
  w.nx = std::min(kChunk, s - w.col0);
  const bool thumb = w.tile >= tl.grid_tiles();
  w.oy0 = (thumb ? 0 : w.tile / tl.cols * s) + w.row0;
  w.ox0 = (thumb ? 0 : w.tile % tl.cols * s) + w.col0;
  // Window starts and ends are non-decreasing in the output index.
  const int oy1 = w.oy0 + w.ny - 1, ox1 = w.ox0 + w.nx - 1;
  w.ry0 = r.v.start[w.oy0];
  w.nry = r.v.start[oy1] + r.v.count[oy1] - w.ry0;
  w.rx0 = r.h.start[w.ox0];
  w.nrx = r.h.start[ox1] + r.h.count[ox1] - w.rx0;
  return w;
}

// 1-D pass over `lines` output lines: line k = filter of the input lines starting at coefficient o0 + k.
void filter_lines(const Coeffs& c, int o0, int lines, const uint8_t* in, size_t in_stride, int in_first, int len,
                  uint8_t* out, size_t out_stride) {
  for (int k = 0; k < lines; ++k) {
    const int o = o0 + k;
    const int32_t* w = &c.weight[static_cast<size_t>(o) * c.ksize];
    filter_line(in + (c.start[o] - in_first) * in_stride, in_stride, w, c.count[o], len, out + k * out_stride);
  }
}

template <typename T>
void store_rows(const Job& job, const Window& w, const uint8_t* rows, size_t stride) {
  const int s = job.req.tiling.size;
  T* base = static_cast<T*>(job.req.out) + static_cast<size_t>(w.tile) * 3 * s * s;
  for (int y = 0; y < w.ny; ++y) {
    const uint8_t* line = rows + y * stride;
    for (int c = 0; c < 3; ++c) {
      T* dst = base + (static_cast<size_t>(c) * s + w.row0 + y) * s + w.col0;
      const uint32_t* lut = job.lut[c];
      for (int x = 0; x < w.nx; ++x) dst[x] = static_cast<T>(lut[line[x * 3 + c]]);
    }
  }
}

// Horizontal pass first (PIL's usual order): transpose the source window into column lines, filter them into
// nx output-column lines, transpose back into row lines, filter those into the ny output rows.
const uint8_t* item_horizontal_first(const Job& job, const Resample& r, const Window& w, Scratch& sc, size_t* stride) {
  const size_t lc = static_cast<size_t>(w.nry) * 3 + 1;  // +1: pad byte for the 4-byte copies
  uint8_t* cols = sc.a.sized(w.nrx * lc);
  const uint8_t* src = job.req.image + (static_cast<size_t>(w.ry0) * job.req.width + w.rx0) * 3;
  transpose_pixels(src, static_cast<size_t>(job.req.width) * 3, w.nry, w.nrx, cols, lc);
  uint8_t* h_cols = sc.b.sized(w.nx * lc);
  filter_lines(r.h, w.ox0, w.nx, cols, lc, w.rx0, w.nry * 3, h_cols, lc);
  const size_t lr = static_cast<size_t>(w.nx) * 3 + 1;
  uint8_t* h_rows = sc.a.sized(w.nry * lr);
  transpose_pixels(h_cols, lc, w.nx, w.nry, h_rows, lr);
  uint8_t* out = sc.c.sized(w.ny * lr);
  filter_lines(r.v, w.oy0, w.ny, h_rows, lr, w.ry0, w.nx * 3, out, lr);
  *stride = lr;
  return out;
}

// Vertical pass first (Pillow 13 for images whose height shrinks much more than their width): source rows are
// already lines, so filter them into ny rows, transpose to column lines, filter into nx columns, transpose back.
const uint8_t* item_vertical_first(const Job& job, const Resample& r, const Window& w, Scratch& sc, size_t* stride) {
  const size_t row_bytes = static_cast<size_t>(job.req.width) * 3;
  const size_t lr = static_cast<size_t>(w.nrx) * 3 + 1;
  uint8_t* v_rows = sc.a.sized(w.ny * lr);
  filter_lines(r.v, w.oy0, w.ny, job.req.image + static_cast<size_t>(w.rx0) * 3, row_bytes, 0, w.nrx * 3, v_rows, lr);
  const size_t lc = static_cast<size_t>(w.ny) * 3 + 1;
  uint8_t* v_cols = sc.b.sized(w.nrx * lc);
  transpose_pixels(v_rows, lr, w.ny, w.nrx, v_cols, lc);
  uint8_t* h_cols = sc.a.sized(w.nx * lc);
  filter_lines(r.h, w.ox0, w.nx, v_cols, lc, w.rx0, w.ny * 3, h_cols, lc);
  const size_t lo = static_cast<size_t>(w.nx) * 3 + 1;
  uint8_t* out = sc.c.sized(w.ny * lo);
  transpose_pixels(h_cols, lc, w.nx, w.ny, out, lo);
  *stride = lo;
  return out;
}

void run_item(const Job& job, int item, Scratch& sc) {
  const Resample& r = job.resample(item);
  const Window w = window_of(job, r, item);
  size_t stride = 0;
  const uint8_t* rows = r.vertical_first ? item_vertical_first(job, r, w, sc, &stride)
                                         : item_horizontal_first(job, r, w, sc, &stride);
  if (job.req.dtype == kFloat32) return store_rows<uint32_t>(job, w, rows, stride);
  store_rows<uint16_t>(job, w, rows, stride);
}

// Items are independent and each is computed the same way whichever thread takes it, so the output bytes do
// not depend on the thread count.
int run_parallel(const Job& job, int requested) {
  const int n = job.items();
  // Items in order of their first source row, so that the tile and thumbnail items reading the same source rows
  // run close together and the second read hits the cache instead of memory.
  std::vector<std::pair<int, int>> order(n);
  for (int i = 0; i < n; ++i) order[i] = {window_of(job, job.resample(i), i).ry0, i};
  std::stable_sort(order.begin(), order.end());
  const int threads = std::max(1, std::min(requested > 0 ? requested : hardware_threads(), n));
  std::atomic<int> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&] {
    ScratchPool& pool = scratch_pool();
    try {
      std::unique_ptr<Scratch> sc;
      {
        std::lock_guard<std::mutex> lock(pool.mutex);
        if (!pool.free.empty()) sc = std::move(pool.free.back()), pool.free.pop_back();
      }
      if (!sc) sc = std::make_unique<Scratch>();
      for (int i; (i = next.fetch_add(1)) < n;) run_item(job, order[i].second, *sc);
      std::lock_guard<std::mutex> lock(pool.mutex);
      if (pool.free.size() < 16) pool.free.push_back(std::move(sc));
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next = n;
    }
  };
  std::vector<std::thread> pool;
  for (int k = 1; k < threads; ++k) {
    try {
      pool.emplace_back(worker);
    } catch (const std::system_error&) {  // no more threads to be had: the ones running share the items
      break;
    }
  }
  worker();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
  return threads;
}

}  // namespace

int preprocess_cpu(const CpuRequest& req) {
  Job job;
  job.req = req;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) job.lut[c][v] = output_bits(v, c, req.dtype);
  }
  const Tiling& tl = req.tiling;
  job.bands = (tl.size + kBand - 1) / kBand;
  job.chunks = (tl.size + kChunk - 1) / kChunk;
  if (int64_t{tl.num_tiles()} * job.bands * job.chunks >= (int64_t{1} << 30)) {
    throw std::invalid_argument("grid and image size give too many tiles");
  }
  job.main = make_resample(req.width, req.height, tl.size * tl.cols, tl.size * tl.rows, req.pillow13_order);
  if (tl.num_tiles() > tl.grid_tiles()) {
    job.thumb = make_resample(req.width, req.height, tl.size, tl.size, req.pillow13_order);
  }
  return run_parallel(job, req.num_threads);
}

int hardware_threads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));  // respects taskset/cgroups
#endif
  return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace hovle
