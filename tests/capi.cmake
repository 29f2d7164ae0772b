# The C ABI: a test program written in C against include/onebit/onebit.h, linked to libonebit.so.
if(TARGET onebit)
  add_executable(capi_test ${CMAKE_CURRENT_SOURCE_DIR}/capi/capi_test.c)
  set_target_properties(capi_test PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
  target_compile_options(capi_test PRIVATE -Wall -Wextra -Werror -pedantic)
  target_link_libraries(capi_test PRIVATE onebit)
  add_test(NAME capi
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/capi/run_capi_test.sh $<TARGET_FILE:onebit_cli>
                   $<TARGET_FILE:capi_test> $<TARGET_FILE:onebit>)
  set_tests_properties(capi PROPERTIES LABELS "capi" TIMEOUT 300)
endif()
