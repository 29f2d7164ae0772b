# CUDA kernel checks (tests/cuda/*.cu), built only when nvcc was found. Each one prints
# "SKIPPED: no CUDA device (...)" and exits 0 on a machine without a usable GPU (CTest then
# reports it skipped); with a GPU it compares the kernels bit for bit and exits 1 on a mismatch.
if(ONEBIT_HAVE_CUDA)
  file(GLOB cuda_test_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda/*.cu)
  foreach(src ${cuda_test_srcs})
    get_filename_component(name ${src} NAME_WE)
    add_executable(test_cuda_${name} ${src})
    target_link_libraries(test_cuda_${name} PRIVATE onebit_kernels_cuda)
    if(name STREQUAL "kv_quant_check")  # compares with the engine's CPU quantizer (engine/kv_quant.h)
      target_link_libraries(test_cuda_${name} PRIVATE onebit_engine)
    endif()
    if(name STREQUAL "sample_check")  # compares with the host Sampler
      target_link_libraries(test_cuda_${name} PRIVATE onebit_sampler)
    endif()
    add_test(NAME cuda_${name} COMMAND test_cuda_${name})
    set_tests_properties(cuda_${name} PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED:" LABELS cuda TIMEOUT 600)
  endforeach()
endif()
