// pybind11 bindings of the CPU operations: ped_fast._C. Arguments are raw
// addresses (tensor.data_ptr()) and sizes, so the module does not depend on
// torch's C++ ABI. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <omp.h>

#include <cstdint>

#include "ops.h"

namespace py = pybind11;

template <typename T>
T* ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "ped_fast CPU kernels (C++/OpenMP); use ped_fast.cpu, not this module.";
  m.def(
      "class_stats",
      [](std::uintptr_t x, bool is_double, int64_t n, int64_t dim, int64_t row_stride, std::uintptr_t index,
         int64_t num_classes, std::uintptr_t counts, std::uintptr_t mean, std::uintptr_t var) {
        py::gil_scoped_release release;
        ped::class_stats(ptr<const void>(x), is_double, n, dim, row_stride, ptr<const int64_t>(index), num_classes,
                         ptr<int64_t>(counts), ptr<double>(mean), ptr<double>(var));
      });
  m.def(
      "pairwise_forces",
      [](std::uintptr_t mu, std::uintptr_t radius, int64_t num_classes, int64_t dim, double nsigma, double coef,
         std::uintptr_t dist, std::uintptr_t drift, bool full, std::uintptr_t delta) {
        ped::ForcesResult r;
        {
          py::gil_scoped_release release;
          r = ped::pairwise_forces(ptr<const double>(mu), ptr<const double>(radius), num_classes, dim, nsigma, coef,
                                   ptr<double>(dist), ptr<const double>(drift), full, ptr<double>(delta));
        }
        return py::make_tuple(r.position_change, r.evaluated_pairs, r.active_pairs, r.coincident);
      });
  m.def("integrate", [](std::uintptr_t x, int64_t x_stride, std::uintptr_t out, int64_t out_stride, bool is_double,
                        std::uintptr_t index, std::uintptr_t shift, int64_t n, int64_t dim, int64_t num_classes) {
    py::gil_scoped_release release;
    ped::integrate(ptr<const void>(x), x_stride, ptr<void>(out), out_stride, is_double, ptr<const int64_t>(index),
                   ptr<const void>(shift), n, dim, num_classes);
  });
  m.def("own_class_probability", [](std::uintptr_t logits, std::uintptr_t table, bool is_double, std::uintptr_t index,
                                    int64_t n, int64_t num_classes, bool soften, std::uintptr_t own) {
    py::gil_scoped_release release;
    ped::own_class_probability(ptr<const void>(logits), ptr<const void>(table), is_double, ptr<const int64_t>(index),
                               n, num_classes, soften, ptr<void>(own));
  });
  m.def("num_threads", [] {
    int threads = 1;
#pragma omp parallel
#pragma omp single
    threads = omp_get_num_threads();
    return threads;
  });
}
