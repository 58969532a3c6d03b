/* Helpers shared by the C test programs: CHECK stops the program with a message naming the
 * file, line and failed condition (and errno), so the Rust test that runs it shows why. */
#ifndef UMAP_TEST_CHECK_H
#define UMAP_TEST_CHECK_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(cond)                                                                         \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      fprintf(stderr, "%s:%d: check failed: %s (errno %d: %s)\n", __FILE__, __LINE__,       \
              #cond, errno, strerror(errno));                                               \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

/* Expects `call` to fail with `expected_errno`; `failed` tells failure from its result. */
#define CHECK_ERRNO(call, failed, expected_errno)                                           \
  do {                                                                                      \
    errno = 0;                                                                              \
    if (!((call)failed)) {                                                                  \
      fprintf(stderr, "%s:%d: %s did not fail\n", __FILE__, __LINE__, #call);               \
      exit(1);                                                                              \
    }                                                                                       \
    if (errno != (expected_errno)) {                                                        \
      fprintf(stderr, "%s:%d: %s: errno %d (%s), expected %d (%s)\n", __FILE__, __LINE__,   \
              #call, errno, strerror(errno), expected_errno, strerror(expected_errno));     \
      exit(1);                                                                              \
    }                                                                                       \
  } while (0)

/* Creates `path` holding `size` bytes whose every 8-byte word is its own offset + `salt`;
 * returns a descriptor open read-write. */
static inline int make_file(const char *path, size_t size, uint64_t salt) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  CHECK(fd >= 0);
  size_t chunk = 1 << 20;
  uint64_t *buf = malloc(chunk);
  CHECK(buf != NULL);
  for (size_t off = 0; off < size; off += chunk) {
    size_t n = size - off < chunk ? size - off : chunk;
    for (size_t i = 0; i < n / 8; i++) buf[i] = off + i * 8 + salt;
    CHECK(pwrite(fd, buf, n, (off_t)off) == (ssize_t)n);
  }
  free(buf);
  return fd;
}

/* The 8-byte word at `offset` of the file open as `fd`, read with pread (not through umap). */
static inline uint64_t file_word(int fd, uint64_t offset) {
  uint64_t w;
  CHECK(pread(fd, &w, 8, (off_t)offset) == 8);
  return w;
}

/* How many of the system pages in [addr, addr + len) are resident (mincore). */
static inline size_t resident_pages(void *addr, size_t len) {
  size_t ps = (size_t)sysconf(_SC_PAGESIZE);
  size_t n = (len + ps - 1) / ps;
  unsigned char *vec = malloc(n);
  CHECK(vec != NULL);
  CHECK(mincore(addr, len, vec) == 0);
  size_t resident = 0;
  for (size_t i = 0; i < n; i++) resident += vec[i] & 1;
  free(vec);
  return resident;
}

#endif
