/* Several threads read and write one writable region much larger than the buffer; umap_flush
 * and uunmap must write every change back to the file (checked with pread), and the caller
 * may close its descriptor right after umap. Usage: rw_threads FILE */
#include <pthread.h>

#include <umap.h>

#include "check.h"

#define SIZE (16u << 20)
#define THREADS 4

static uint64_t *words;

struct job {
  size_t first, count; /* words */
  uint64_t expect_salt, write_salt;
};

static void *work(void *arg) {
  struct job *j = arg;
  for (size_t i = j->first; i < j->first + j->count; i++) {
    uint64_t want = i * 8 + j->expect_salt;
    if (words[i] != want) {
      fprintf(stderr, "word %zu is %llu, expected %llu\n", i, (unsigned long long)words[i],
              (unsigned long long)want);
      exit(1);
    }
    words[i] = i * 8 + j->write_salt;
  }
  return NULL;
}

/* Every thread checks its slice holds `expect_salt`, then writes `write_salt` into it. */
static void round_of(uint64_t expect_salt, uint64_t write_salt) {
  pthread_t threads[THREADS];
  struct job jobs[THREADS];
  size_t per = SIZE / 8 / THREADS;
  for (int t = 0; t < THREADS; t++) {
    jobs[t] = (struct job){t * per, per, expect_salt, write_salt};
    CHECK(pthread_create(&threads[t], NULL, work, &jobs[t]) == 0);
  }
  for (int t = 0; t < THREADS; t++) CHECK(pthread_join(threads[t], NULL) == 0);
}

static void check_file(int fd, uint64_t salt) {
  for (uint64_t off = 0; off < SIZE; off += 4096 + 8) /* every page, a different word */
    CHECK(file_word(fd, off & ~7ull) == (off & ~7ull) + salt);
  CHECK(lseek(fd, 0, SEEK_END) == (off_t)SIZE); /* write-back keeps the file's length */
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  CHECK(umap_has_write_support() == 1);
  int fd = make_file(argv[1], SIZE, 1);
  void *base = umap(NULL, SIZE, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
  CHECK(base != UMAP_FAILED);
  CHECK(close(fd) == 0); /* the library keeps its own descriptor */
  words = base;

  round_of(1, 2);
  CHECK(umap_flush() == 0);
  int check = open(argv[1], O_RDONLY);
  CHECK(check >= 0);
  check_file(check, 2);

  round_of(2, 3);
  CHECK(uunmap(base, SIZE) == 0);
  check_file(check, 3);
  CHECK(close(check) == 0);

  printf("rw_threads ok: %d threads, %u MiB through %llu pages of %llu bytes\n", THREADS,
         SIZE >> 20, (unsigned long long)umapcfg_get_max_pages_in_buffer(),
         (unsigned long long)umapcfg_get_umap_page_size());
  return 0;
}
