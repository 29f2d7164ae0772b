/* onebit.h: the stable C ABI of 1bit (libonebit.so).
 *
 * Load a ternary (BitNet b1.58) model, tokenize, and generate tokens with a callback, from C or any
 * language with a C FFI (Python ctypes, Rust, Go, ...). docs/c-api.md is the user guide.
 *
 * Conventions
 *  - Every object is an opaque handle made by a *_new / *_load function and released by the
 *    matching *_free function (which accepts NULL).
 *  - Functions that can fail take `onebit_error** err` last. When err is not NULL, *err is set to
 *    NULL on success and to a new error on failure; read it with onebit_error_message() and free
 *    it with onebit_error_free(). Passing err = NULL is allowed (the error is then dropped).
 *    No function aborts or lets a C++ exception escape.
 *  - Text is UTF-8 bytes with an explicit length (no NUL terminator needed); returned text is
 *    NUL-terminated in addition.
 *  - Threads: a model may be shared by several threads for tokenize/detokenize and for creating
 *    contexts; one context must be used by one thread at a time.
 *
 * Versioning: ONEBIT_ABI_VERSION is bumped on every incompatible change of this header (a struct
 * field added, a signature changed). Compare onebit_abi_version() (the library's) with
 * ONEBIT_ABI_VERSION (the header you compiled against) at start-up.
 */
#ifndef ONEBIT_ONEBIT_H_
#define ONEBIT_ONEBIT_H_

#include <stddef.h>
#include <stdint.h>

#if defined(ONEBIT_BUILDING_LIBRARY)
#define ONEBIT_API __attribute__((visibility("default")))
#else
#define ONEBIT_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define ONEBIT_ABI_VERSION 1

/* Return codes of onebit_tokenize / onebit_detokenize. */
#define ONEBIT_OK 0
#define ONEBIT_BUFFER_TOO_SMALL 1 /* nothing written; *n_out holds the size needed */
#define ONEBIT_FAILED (-1)        /* *err describes why */

typedef struct onebit_model onebit_model;
typedef struct onebit_context onebit_context;
typedef struct onebit_error onebit_error;

typedef struct onebit_context_params {
  int64_t n_ctx;     /* context length in tokens; 0 = min(model maximum, 4096) */
  int32_t n_threads; /* CPU threads; 0 = all hardware threads */
} onebit_context_params;

typedef struct onebit_sampling_params {
  float temperature;        /* >= 0; 0 = greedy (argmax) */
  int32_t top_k;            /* 0 = off */
  float top_p;              /* (0, 1]; 1 = off */
  float min_p;              /* [0, 1]; 0 = off */
  float repetition_penalty; /* > 0; 1 = off */
  int32_t max_tokens;       /* tokens to generate at most; -1 = until the context is full */
  uint64_t seed;            /* RNG seed, used when has_seed != 0 */
  int32_t has_seed;         /* 0 = a random seed from the OS */
  int32_t ignore_eos;       /* non-zero: do not stop on end-of-sequence / end-of-turn tokens */
} onebit_sampling_params;

/* The ABI version the library was built with (ONEBIT_ABI_VERSION of its header). */
ONEBIT_API int onebit_abi_version(void);

/* ---- errors ---- */
/* The message (UTF-8, NUL-terminated); valid until onebit_error_free. "" for NULL. */
ONEBIT_API const char* onebit_error_message(const onebit_error* err);
ONEBIT_API void onebit_error_free(onebit_error* err);

/* ---- models ---- */
/* Loads a model file or folder (.h1b, GGUF, Hugging Face folder). NULL on failure. */
ONEBIT_API onebit_model* onebit_model_load(const char* path, onebit_error** err);
ONEBIT_API void onebit_model_free(onebit_model* model);
ONEBIT_API int32_t onebit_model_n_vocab(const onebit_model* model);
ONEBIT_API int64_t onebit_model_max_context(const onebit_model* model);
/* Special token ids; -1 when the model has none. */
ONEBIT_API int32_t onebit_token_bos(const onebit_model* model);
ONEBIT_API int32_t onebit_token_eos(const onebit_model* model);

/* Text -> token ids. add_special != 0 adds what the tokenizer prescribes (e.g. BOS). Sets
 * *n_out to the number of ids the text needs; writes them to out when cap >= *n_out and returns
 * ONEBIT_OK, else returns ONEBIT_BUFFER_TOO_SMALL without writing (call again with a larger out;
 * out may be NULL when cap is 0). ONEBIT_FAILED on error. */
ONEBIT_API int onebit_tokenize(const onebit_model* model, const char* text, size_t len, int add_special,
                               int32_t* out, size_t cap, size_t* n_out, onebit_error** err);

/* Token ids -> UTF-8 text (ill-formed sequences become U+FFFD). skip_special != 0 leaves out
 * control tokens (BOS, EOS, ...). Sets *n_out to the text's length in bytes (without the NUL);
 * writes the text and a terminating NUL when cap >= *n_out + 1 and returns ONEBIT_OK, else
 * returns ONEBIT_BUFFER_TOO_SMALL without writing. ONEBIT_FAILED on error (e.g. an unknown id). */
ONEBIT_API int onebit_detokenize(const onebit_model* model, const int32_t* ids, size_t n, int skip_special,
                                 char* out, size_t cap, size_t* n_out, onebit_error** err);

/* ---- contexts (one sequence: KV cache + sampler state) ---- */
ONEBIT_API onebit_context_params onebit_context_params_default(void);
/* The model must outlive the context. params NULL = defaults. NULL on failure. Each context
 * holds its own copy of the weights in the kernels' layout. */
ONEBIT_API onebit_context* onebit_context_new(const onebit_model* model, const onebit_context_params* params,
                                              onebit_error** err);
ONEBIT_API void onebit_context_free(onebit_context* ctx);
ONEBIT_API int64_t onebit_context_n_ctx(const onebit_context* ctx);
/* Forgets the cached sequence. */
ONEBIT_API void onebit_context_reset(onebit_context* ctx);

ONEBIT_API onebit_sampling_params onebit_sampling_params_default(void);

/* Called once per generated token with its id and the text it completes (UTF-8, NUL-terminated;
 * empty while a multi-byte character is incomplete, and for control tokens). Return 0 to
 * continue, non-zero to stop after this token. When generation ends in the middle of a character,
 * one last call with id -1 passes the held-back bytes (as U+FFFD); it is not counted as a token
 * and its return value is ignored. */
typedef int (*onebit_token_callback)(void* user, int32_t id, const char* piece, size_t len);

/* Generates a continuation of `prompt` (n >= 1 ids, the whole sequence: BOS included if wanted).
 * The context keeps the keys/values of what it ran last: the longest common prefix of that and
 * `prompt` is reused and only the rest is computed, so a chat can pass the whole conversation
 * each turn. Stops after params->max_tokens tokens, on an end-of-sequence / end-of-turn token
 * (not passed to the callback, not counted), when the callback returns non-zero, when *cancel
 * becomes non-zero (checked before each step; cancel may be NULL) or when the context is full.
 * params NULL = onebit_sampling_params_default(). Returns the number of tokens passed to the
 * callback (on_token may be NULL), or -1 on error (*err says why; e.g. the prompt does not fit
 * in the context). */
ONEBIT_API int64_t onebit_generate(onebit_context* ctx, const int32_t* prompt, size_t n,
                                   const onebit_sampling_params* params, onebit_token_callback on_token, void* user,
                                   const volatile int* cancel, onebit_error** err);

#ifdef __cplusplus
}
#endif

#endif /* ONEBIT_ONEBIT_H_ */
