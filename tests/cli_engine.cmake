# End-to-end tests of the engine-backed `1bit` commands (ppl, bench, chat, run) on synthesized
# models (shell scripts in tests/cli/).
foreach(t ppl bench chat context_errors)
  add_test(NAME cli_${t} COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/cli/${t}.sh $<TARGET_FILE:onebit_cli>)
  set_tests_properties(cli_${t} PROPERTIES LABELS cli TIMEOUT 300)
endforeach()
