# End-to-end tests of the `1bit` binary (shell scripts in tests/cli/).
add_test(NAME cli_convert_roundtrip
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/convert_roundtrip.sh $<TARGET_FILE:onebit_cli>)
set_tests_properties(cli_convert_roundtrip PROPERTIES LABELS cli TIMEOUT 300)
