// pybind11 module `hovle.kernels._native`: argument checks, then the CPU implementation (preprocess.cpp) without the
// GIL. Python reaches it only through hovle/kernels/preprocess.py, which validates the same arguments with friendlier
// messages; these checks keep a direct caller from writing out of bounds.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "preprocess.h"

namespace py = pybind11;

namespace {

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);  // ValueError in Python
}

int preprocess_tiles(py::buffer image, uintptr_t out_ptr, int dtype, py::tuple out_shape, int cols, int rows,
                     bool use_thumbnail, bool pillow13_order, int num_threads) {
  using namespace hovle;
  py::buffer_info info = image.request();
  require(info.format == py::format_descriptor<uint8_t>::format() && info.itemsize == 1,
          "image must be a uint8 buffer, got format '" + info.format + "'");
  require(info.ndim == 3 && info.shape[2] == 3, "image must have shape (H, W, 3)");
  const int64_t h = info.shape[0], w = info.shape[1];
  require(h >= 1 && w >= 1, "image must be at least 1x1, got " + std::to_string(w) + "x" + std::to_string(h));
  require(h < (1 << 30) && w < (1 << 30), "image sides must be below 2^30");
  require(info.strides[2] == 1 && info.strides[1] == 3 && info.strides[0] == 3 * w, "image must be C-contiguous");
  require(cols >= 1 && rows >= 1 && cols <= 4096 && rows <= 4096, "grid (cols, rows) must be in 1..4096");
  require(dtype == kFloat32 || dtype == kFloat16 || dtype == kBFloat16, "dtype code must be 0, 1 or 2");
  require(out_ptr != 0, "output pointer is null");
  require(py::len(out_shape) == 4, "out_shape must be (n, 3, S, S)");
  const int64_t n = out_shape[0].cast<int64_t>(), c = out_shape[1].cast<int64_t>();
  const int64_t s = out_shape[2].cast<int64_t>(), s2 = out_shape[3].cast<int64_t>();
  require(c == 3 && s == s2 && s >= 1 && s <= 16384, "out_shape must be (n, 3, S, S) with 1 <= S <= 16384");

  CpuRequest req;
  req.image = static_cast<const uint8_t*>(info.ptr);
  req.height = static_cast<int>(h);
  req.width = static_cast<int>(w);
  req.tiling = Tiling{cols, rows, static_cast<int>(s), use_thumbnail};
  require(n == req.tiling.num_tiles(), "out_shape[0] = " + std::to_string(n) + " but the tiling has " +
                                           std::to_string(req.tiling.num_tiles()) + " tiles");
  req.out = reinterpret_cast<void*>(out_ptr);
  req.dtype = dtype;
  req.pillow13_order = pillow13_order;
  req.num_threads = num_threads;
  py::gil_scoped_release release;  // `info` keeps the image buffer alive; the output belongs to the caller
  return preprocess_cpu(req);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "HoVLE native kernels (CPU). Use through hovle/kernels/preprocess.py, not directly.";
  m.def("preprocess_tiles", &preprocess_tiles, py::arg("image"), py::arg("out_ptr"), py::arg("dtype"),
        py::arg("out_shape"), py::arg("cols"), py::arg("rows"), py::arg("use_thumbnail"), py::arg("pillow13_order"),
        py::arg("num_threads") = 0,
        "Resize + tile + normalise a C-contiguous uint8 (H, W, 3) image into the preallocated contiguous CPU "
        "tensor at out_ptr of shape out_shape = (n, 3, S, S) and dtype code (0 float32, 1 float16, 2 bfloat16). "
        "pillow13_order selects Pillow >= 13's pass order (vertical first for images whose height shrinks much "
        "more than their width), else Pillow <= 12's (always horizontal first). num_threads <= 0 means "
        "min(usable CPUs, work items). Returns the number of threads used.");
  m.def("hardware_threads", &hovle::hardware_threads, "CPUs this process may run on.");
}
