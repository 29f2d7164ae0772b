/* Test of the C ABI (include/onebit/onebit.h), written in C so that the header is checked as C.
 *
 *   capi_test MODEL.h1b      (a synthesized tiny model: tests/capi/run_capi_test.sh makes one)
 *
 * Round trip tokenize/detokenize with the two-call buffer protocol, greedy generation that is
 * reproducible (after a reset and through the cached-prefix path), the callback's stop, the cancel
 * flag, and errors (missing file, prompt longer than the context, bad parameters, NULL handles)
 * that come back as messages instead of crashes. Exits non-zero on the first failed check. */
#include <onebit/onebit.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_failures = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)

#define REQUIRE(cond)                                                      \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: required check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                             \
    }                                                                      \
  } while (0)

#define MAX_TOKENS 64

typedef struct {
  int32_t ids[MAX_TOKENS];
  int n;                 /* tokens seen (id >= 0) */
  char text[4096];
  size_t text_len;
  int stop_after;        /* return non-zero after this many tokens (0 = never) */
  int cancel_after;      /* set *cancel after this many tokens (0 = never) */
  volatile int* cancel;
} collector;

static int collect(void* user, int32_t id, const char* piece, size_t len) {
  collector* c = (collector*)user;
  if (piece == NULL || strlen(piece) != len) ++g_failures; /* must be NUL-terminated at len */
  if (c->text_len + len < sizeof c->text) {
    memcpy(c->text + c->text_len, piece, len);
    c->text_len += len;
    c->text[c->text_len] = '\0';
  }
  if (id < 0) return 0; /* trailing held-back bytes */
  if (c->n < MAX_TOKENS) c->ids[c->n] = id;
  ++c->n;
  if (c->cancel_after > 0 && c->n == c->cancel_after) *c->cancel = 1;
  return c->stop_after > 0 && c->n >= c->stop_after;
}

static void collector_init(collector* c) { memset(c, 0, sizeof *c); }

int main(int argc, char** argv) {
  onebit_error* err = NULL;
  if (argc != 2) {
    fprintf(stderr, "usage: capi_test MODEL\n");
    return 2;
  }
  CHECK(onebit_abi_version() == ONEBIT_ABI_VERSION);

  /* A missing file is an error with a message that names it, not a crash. */
  {
    onebit_model* m = onebit_model_load("/nonexistent/dir/model.h1b", &err);
    CHECK(m == NULL);
    REQUIRE(err != NULL);
    CHECK(strstr(onebit_error_message(err), "/nonexistent/dir/model.h1b") != NULL);
    fprintf(stderr, "expected error: %s\n", onebit_error_message(err));
    onebit_error_free(err);
    err = NULL;
    CHECK(onebit_model_load(NULL, NULL) == NULL); /* err = NULL is allowed */
    CHECK(strcmp(onebit_error_message(NULL), "") == 0);
  }

  onebit_model* model = onebit_model_load(argv[1], &err);
  if (model == NULL) fprintf(stderr, "load: %s\n", onebit_error_message(err));
  REQUIRE(model != NULL && err == NULL);
  CHECK(onebit_model_n_vocab(model) > 256);
  CHECK(onebit_token_bos(model) >= 0);
  CHECK(onebit_token_eos(model) >= 0);

  /* Tokenize: first call learns the size, second fills the buffer. */
  const char* text = "Hello, world! caf\xc3\xa9 \xe2\x82\xac 123";
  size_t n_ids = 0;
  int rc = onebit_tokenize(model, text, strlen(text), 0, NULL, 0, &n_ids, &err);
  CHECK(rc == ONEBIT_BUFFER_TOO_SMALL && err == NULL);
  REQUIRE(n_ids > 0 && n_ids < 256);
  int32_t ids[256];
  size_t n2 = 0;
  rc = onebit_tokenize(model, text, strlen(text), 0, ids, n_ids, &n2, &err);
  CHECK(rc == ONEBIT_OK && n2 == n_ids && err == NULL);
  {
    int32_t with_bos[260];
    size_t n3 = 0;
    rc = onebit_tokenize(model, text, strlen(text), 1, with_bos, 260, &n3, &err);
    CHECK(rc == ONEBIT_OK && n3 >= n_ids);
  }

  /* Detokenize: too small (no room for the NUL) then exact. */
  size_t n_text = 0;
  char small[4];
  rc = onebit_detokenize(model, ids, n_ids, 0, small, sizeof small, &n_text, &err);
  CHECK(rc == ONEBIT_BUFFER_TOO_SMALL && n_text == strlen(text));
  char back[256];
  rc = onebit_detokenize(model, ids, n_ids, 0, back, n_text + 1, &n_text, &err);
  CHECK(rc == ONEBIT_OK && err == NULL);
  CHECK(strcmp(back, text) == 0);

  /* An id outside the vocabulary is an error. */
  {
    int32_t bad = 1 << 30;
    rc = onebit_detokenize(model, &bad, 1, 0, back, sizeof back, &n_text, &err);
    CHECK(rc == ONEBIT_FAILED);
    REQUIRE(err != NULL);
    CHECK(strlen(onebit_error_message(err)) > 0);
    onebit_error_free(err);
    err = NULL;
  }

  onebit_context_params cp = onebit_context_params_default();
  cp.n_ctx = 128;
  cp.n_threads = 2;
  onebit_context* ctx = onebit_context_new(model, &cp, &err);
  if (ctx == NULL) fprintf(stderr, "context: %s\n", onebit_error_message(err));
  REQUIRE(ctx != NULL);
  CHECK(onebit_context_n_ctx(ctx) == 128);

  /* The prompt: BOS + the tokens of `text`. */
  int32_t prompt[257];
  prompt[0] = onebit_token_bos(model);
  memcpy(prompt + 1, ids, n_ids * sizeof(int32_t));
  const size_t n_prompt = n_ids + 1;

  onebit_sampling_params sp = onebit_sampling_params_default();
  sp.temperature = 0.0f;
  sp.max_tokens = 16;
  sp.ignore_eos = 1; /* random weights: do not let an early EOS shorten the run */

  collector a, b, c;
  collector_init(&a);
  int64_t got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &a, NULL, &err);
  if (got < 0) fprintf(stderr, "generate: %s\n", onebit_error_message(err));
  CHECK(got == 16 && a.n == 16 && err == NULL);

  /* Same prompt again, through the cached-prefix path: the same tokens. */
  collector_init(&b);
  got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &b, NULL, &err);
  CHECK(got == 16 && b.n == 16);
  CHECK(memcmp(a.ids, b.ids, 16 * sizeof(int32_t)) == 0);
  CHECK(a.text_len == b.text_len && memcmp(a.text, b.text, a.text_len) == 0);

  /* After a reset: the same tokens again. */
  onebit_context_reset(ctx);
  collector_init(&c);
  got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &c, NULL, &err);
  CHECK(got == 16 && memcmp(a.ids, c.ids, 16 * sizeof(int32_t)) == 0);

  /* The streamed pieces are the detokenized text. */
  {
    char full[4096];
    size_t n_full = 0;
    rc = onebit_detokenize(model, a.ids, 16, 1, full, sizeof full, &n_full, &err);
    CHECK(rc == ONEBIT_OK && n_full == a.text_len && memcmp(full, a.text, n_full) == 0);
  }

  /* Continuing the conversation (prompt + answer + more) keeps the answer's prefix cached and works. */
  {
    int32_t longer[300];
    memcpy(longer, prompt, n_prompt * sizeof(int32_t));
    memcpy(longer + n_prompt, a.ids, 16 * sizeof(int32_t));
    memcpy(longer + n_prompt + 16, ids, n_ids * sizeof(int32_t));
    collector d, e;
    collector_init(&d);
    collector_init(&e);
    got = onebit_generate(ctx, longer, n_prompt + 16 + n_ids, &sp, collect, &d, NULL, &err);
    CHECK(got == 16);
    onebit_context_reset(ctx);
    got = onebit_generate(ctx, longer, n_prompt + 16 + n_ids, &sp, collect, &e, NULL, &err);
    CHECK(got == 16 && memcmp(d.ids, e.ids, 16 * sizeof(int32_t)) == 0);
  }

  /* The callback stops generation. */
  {
    collector s;
    collector_init(&s);
    s.stop_after = 5;
    got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &s, NULL, &err);
    CHECK(got == 5 && s.n == 5);
    CHECK(memcmp(s.ids, a.ids, 5 * sizeof(int32_t)) == 0);
  }

  /* The cancel flag: set from the callback after 3 tokens, or already set before the call. */
  {
    volatile int cancel = 0;
    collector s;
    collector_init(&s);
    s.cancel = &cancel;
    s.cancel_after = 3;
    got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &s, &cancel, &err);
    CHECK(got == 3 && s.n == 3 && err == NULL);
    collector_init(&s);
    got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &s, &cancel, &err);
    CHECK(got == 0 && s.n == 0 && err == NULL);
  }

  /* Sampling with a seed is reproducible. */
  {
    onebit_sampling_params ss = onebit_sampling_params_default();
    ss.max_tokens = 12;
    ss.ignore_eos = 1;
    ss.has_seed = 1;
    ss.seed = 42;
    collector x, y;
    collector_init(&x);
    collector_init(&y);
    CHECK(onebit_generate(ctx, prompt, n_prompt, &ss, collect, &x, NULL, &err) == 12);
    CHECK(onebit_generate(ctx, prompt, n_prompt, &ss, collect, &y, NULL, &err) == 12);
    CHECK(memcmp(x.ids, y.ids, 12 * sizeof(int32_t)) == 0);
  }

  /* Errors: a prompt longer than the context, bad parameters, NULL handles, an empty prompt. */
  {
    int32_t big[200];
    for (int i = 0; i < 200; ++i) big[i] = ids[i % n_ids];
    got = onebit_generate(ctx, big, 200, &sp, collect, NULL, NULL, &err);
    CHECK(got == -1);
    REQUIRE(err != NULL);
    CHECK(strstr(onebit_error_message(err), "200") != NULL && strstr(onebit_error_message(err), "128") != NULL);
    fprintf(stderr, "expected error: %s\n", onebit_error_message(err));
    onebit_error_free(err);
    err = NULL;

    onebit_sampling_params bad = sp;
    bad.top_p = 2.0f;
    got = onebit_generate(ctx, prompt, n_prompt, &bad, NULL, NULL, NULL, &err);
    CHECK(got == -1 && err != NULL && strstr(onebit_error_message(err), "top_p") != NULL);
    onebit_error_free(err);
    err = NULL;

    int32_t oov = 1 << 30;
    got = onebit_generate(ctx, &oov, 1, &sp, NULL, NULL, NULL, &err);
    CHECK(got == -1 && err != NULL);
    onebit_error_free(err);
    err = NULL;

    CHECK(onebit_generate(ctx, prompt, 0, &sp, NULL, NULL, NULL, NULL) == -1);
    CHECK(onebit_generate(NULL, prompt, n_prompt, &sp, NULL, NULL, NULL, NULL) == -1);
    CHECK(onebit_tokenize(NULL, "a", 1, 0, ids, 256, &n2, NULL) == ONEBIT_FAILED);

    onebit_context_params huge = cp;
    huge.n_ctx = (int64_t)1 << 40;
    CHECK(onebit_context_new(model, &huge, &err) == NULL);
    CHECK(err != NULL && strlen(onebit_error_message(err)) > 0);
    onebit_error_free(err);
    err = NULL;

    /* The generation after the errors still matches: the context was left consistent. */
    collector z;
    collector_init(&z);
    got = onebit_generate(ctx, prompt, n_prompt, &sp, collect, &z, NULL, &err);
    CHECK(got == 16 && memcmp(z.ids, a.ids, 16 * sizeof(int32_t)) == 0);
  }

  /* Without a callback the count is still returned. */
  CHECK(onebit_generate(ctx, prompt, n_prompt, &sp, NULL, NULL, NULL, &err) == 16);

  onebit_context_free(ctx);
  onebit_model_free(model);
  onebit_context_free(NULL);
  onebit_model_free(NULL);
  onebit_error_free(NULL);

  if (g_failures != 0) {
    fprintf(stderr, "capi_test: %d check(s) failed\n", g_failures);
    return 1;
  }
  printf("capi_test: all checks passed\n");
  return 0;
}
