# End-to-end server tests: `1bit serve` with the default model, driven by the official OpenAI
# JavaScript client (npm `openai`, pinned in tests/e2e/server/package-lock.json) and raw fetch,
# by raw sockets, and by a load test.
# The npm packages are installed into the build tree on first run (or when the lock file changes).
find_program(ONEBIT_NODE node)
find_program(ONEBIT_NPM npm)
if(ONEBIT_NODE AND ONEBIT_NPM AND TARGET onebit_server)
  set(_srv_src ${PROJECT_SOURCE_DIR}/tests/e2e/server)
  set(_srv_work ${PROJECT_BINARY_DIR}/e2e/server)
  add_test(NAME server_e2e
    COMMAND sh -c "set -e; mkdir -p '${_srv_work}'; cd '${_srv_work}'; \
cp '${_srv_src}/package.json' '${_srv_src}/package-lock.json' .; \
if ! cmp -s package-lock.json node_modules/.onebit-lock 2>/dev/null; then \
'${ONEBIT_NPM}' ci --no-audit --no-fund --loglevel=error; cp package-lock.json node_modules/.onebit-lock; fi; \
exec '${ONEBIT_NODE}' '${_srv_src}/run_e2e.mjs' --cli '$<TARGET_FILE:onebit_cli>' --modules '${_srv_work}' \
--model '${PROJECT_SOURCE_DIR}/models/1bit-brown-26m.h1b'")
  set_tests_properties(server_e2e PROPERTIES LABELS "e2e" TIMEOUT 120)
  # Raw sockets (malformed HTTP, huge bodies, slow clients, CORS) and a bounded load test (64
  # streaming clients for 20 s, memory checked): node's own modules only, no npm install.
  add_test(NAME server_raw
    COMMAND ${ONEBIT_NODE} ${_srv_src}/run_raw.mjs --cli $<TARGET_FILE:onebit_cli>
            --model ${PROJECT_SOURCE_DIR}/models/1bit-brown-26m.h1b)
  set_tests_properties(server_raw PROPERTIES LABELS "e2e" TIMEOUT 60)
  # Under ASan the server runs ~6x slower; a longer run keeps the "every client finished a request
  # in each half" check about throughput margins, not luck (96 first-half streams for 64 needed at
  # 20 s on the 2-core machine).
  if(ONEBIT_SANITIZE)
    set(_load_seconds 30)
  else()
    set(_load_seconds 20)
  endif()
  add_test(NAME server_load
    COMMAND ${ONEBIT_NODE} ${_srv_src}/run_load.mjs --cli $<TARGET_FILE:onebit_cli>
            --model ${PROJECT_SOURCE_DIR}/models/1bit-brown-26m.h1b --clients 64 --seconds ${_load_seconds})
  # Alone: it measures memory and loads both cores.
  set_tests_properties(server_load PROPERTIES LABELS "e2e" TIMEOUT 120 RUN_SERIAL TRUE)
  if(ONEBIT_SANITIZE)
    # ASan keeps freed blocks in a quarantine (256 MB by default) that grows the resident size
    # until it is full, which would read as a leak; without it, freed memory is reused and the
    # memory check means what it says (LeakSanitizer still runs at exit).
    set_tests_properties(server_load PROPERTIES ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:quarantine_size_mb=0")
  endif()
else()
  message(STATUS "1bit: node/npm or Boost not found, server_e2e test disabled")
endif()
