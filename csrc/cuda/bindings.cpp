// pybind11 bindings of the CUDA operations: ped_fast._cuda. Arguments are raw
// device addresses (tensor.data_ptr()), sizes, the device ordinal and a
// stream handle (torch.cuda.current_stream().cuda_stream), so the module
// depends on neither torch's C++ ABI nor a CUDA build of torch; the CUDA
// runtime is linked statically. The GIL is released while the GPU works.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "ops.h"

namespace py = pybind11;

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "ped_fast CUDA kernels; use ped_fast.cuda, not this module.";
  m.def("class_stats_workspace_bytes", &ped::cuda::class_stats_workspace_bytes);
  m.def("class_stats",
        [](std::uintptr_t x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, std::uintptr_t order,
           std::uintptr_t counts, std::uintptr_t starts, std::uintptr_t class_chunks, int64_t num_classes,
           std::uintptr_t chunk_class, std::uintptr_t chunk_begin, std::uintptr_t chunk_end, int64_t chunks,
           std::uintptr_t mean, std::uintptr_t var, std::uintptr_t workspace, int device, std::uintptr_t stream) {
          const ped::cuda::ClassChunks table{ptr<const int64_t>(order),       ptr<const int64_t>(counts),
                                             ptr<const int64_t>(starts),      ptr<const int64_t>(class_chunks),
                                             ptr<const int64_t>(chunk_class), ptr<const int64_t>(chunk_begin),
                                             ptr<const int64_t>(chunk_end),   num_classes,
                                             chunks};
          py::gil_scoped_release release;
          ped::cuda::class_stats(ptr<const void>(x), is_double, n, dim, row_stride, table, ptr<double>(mean),
                                 ptr<double>(var), ptr<void>(workspace), device, ptr<void>(stream));
        });
  m.def("pairwise_forces_workspace_bytes", &ped::cuda::pairwise_forces_workspace_bytes);
  m.def("pairwise_forces",
        [](std::uintptr_t mu, std::uintptr_t radius, int64_t num_classes, int64_t dim, double nsigma, double coef,
           std::uintptr_t dist, std::uintptr_t drift, bool full, std::uintptr_t delta, std::uintptr_t coincident,
           std::uintptr_t workspace, int device, std::uintptr_t stream) {
          ped::cuda::ForcesTotals r;
          {
            py::gil_scoped_release release;
            r = ped::cuda::pairwise_forces(ptr<const double>(mu), ptr<const double>(radius), num_classes, dim, nsigma,
                                           coef, ptr<double>(dist), ptr<const double>(drift), full, ptr<double>(delta),
                                           ptr<unsigned char>(coincident), ptr<void>(workspace), device,
                                           ptr<void>(stream));
          }
          return py::make_tuple(r.position_change, r.evaluated_pairs, r.active_pairs, r.coincident_pairs);
        });
  m.def("integrate",
        [](std::uintptr_t x, int64_t x_stride, std::uintptr_t out, int64_t out_stride, bool is_double,
           std::uintptr_t index, std::uintptr_t shift, int64_t n, int64_t dim, int device, std::uintptr_t stream) {
          py::gil_scoped_release release;
          ped::cuda::integrate(ptr<const void>(x), x_stride, ptr<void>(out), out_stride, is_double,
                               ptr<const int64_t>(index), ptr<const void>(shift), n, dim, device, ptr<void>(stream));
        });
  // What this module's own (static) CUDA runtime sees: torch may find a GPU
  // that this runtime cannot use, e.g. a driver older than the CUDA toolkit
  // that built the extension.
  m.def("probe", [] {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    return py::make_tuple(status == cudaSuccess ? count : 0,
                          status == cudaSuccess ? std::string() : std::string(cudaGetErrorString(status)));
  });
  m.def("runtime_version", [] {
    int version = 0;
    cudaRuntimeGetVersion(&version);
    return version;
  });
}
