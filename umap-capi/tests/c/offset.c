/* Offsets, lengths that are not page multiples, the end of the file, prefetch and pinning.
 * Usage: offset FILE  (run with a buffer of about 1 MiB: UMAP_BUFSIZE pages of
 * UMAP_PAGESIZE) */
#include <umap.h>

#include "check.h"

#define SIZE (4u << 20)

/* Checks that the region at `p` maps `len` bytes of the file (salt `salt`) from `offset`,
 * that the bytes past the file's end read as zeros, and so does the rest of the last page. */
static void check_view(const unsigned char *p, size_t len, uint64_t offset, uint64_t salt) {
  for (size_t i = 0; i + 8 <= len; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    uint64_t want = offset + i < SIZE ? offset + i + salt : 0;
    if (w != want) {
      fprintf(stderr, "offset %llu + %zu: %llu, expected %llu\n", (unsigned long long)offset,
              i, (unsigned long long)w, (unsigned long long)want);
      exit(1);
    }
  }
  size_t page = umapcfg_get_umap_page_size();
  size_t end = (len + page - 1) / page * page;
  for (size_t i = len; i < end; i++) CHECK(p[i] == 0);
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  long sys_page = umapcfg_get_system_page_size();
  uint64_t page = umapcfg_get_umap_page_size();
  CHECK(sys_page == sysconf(_SC_PAGESIZE));
  CHECK(page % sys_page == 0);
  int fd = make_file(argv[1], SIZE, 0);

  /* A read-only view from an offset that is a system page but not a umap page multiple,
   * of a length that is no page multiple. */
  uint64_t offset = 21 * sys_page;
  size_t len = (1u << 20) + 100;
  unsigned char *p = umap(NULL, len, PROT_READ, UMAP_PRIVATE, fd, offset);
  CHECK(p != UMAP_FAILED);
  check_view(p, len, offset, 0);
  CHECK(uunmap(p, 0) == 0); /* 0: the whole region */

  /* Past the end of the file: zeros. */
  offset = SIZE - 2 * sys_page;
  len = 3 * page;
  p = umap(NULL, len, PROT_READ, UMAP_PRIVATE, fd, offset);
  CHECK(p != UMAP_FAILED);
  check_view(p, len, offset, 0);
  CHECK(uunmap(p, len) == 0);

  /* Writes through a view at an offset land at that offset, and nowhere else. */
  offset = 64 << 10;
  len = 256 << 10;
  uint64_t *w = umap(NULL, len, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, offset);
  CHECK(w != UMAP_FAILED);
  for (size_t i = 0; i < len / 8; i++) w[i] = offset + i * 8 + 7;
  CHECK(uunmap(w, len) == 0);
  for (uint64_t off = 0; off < SIZE; off += 1024) {
    uint64_t salt = off >= offset && off < offset + len ? 7 : 0;
    CHECK(file_word(fd, off) == off + salt);
  }

  /* Prefetch: pages named by addresses anywhere inside them are resident on return. */
  CHECK(close(fd) == 0);
  fd = make_file(argv[1], SIZE, 0);
  p = umap(NULL, SIZE, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
  CHECK(p != UMAP_FAILED);
  struct umap_prefetch_item items[8];
  for (int i = 0; i < 8; i++) items[i].page_base_addr = p + (size_t)(5 + 31 * i) * page + 123;
  errno = 0;
  umap_prefetch(8, items);
  CHECK(errno == 0);
  for (int i = 0; i < 8; i++) {
    unsigned char *pg = p + (size_t)(5 + 31 * i) * page;
    CHECK(resident_pages(pg, page) == page / sys_page);
  }
  check_view(p + 222 * page, page, 222 * page, 0);

  /* Pinned pages stay resident while the whole region (4x the buffer) is read, twice, and
   * their writes reach the file. */
  size_t pin_at = 512 << 10, pin_len = 256 << 10;
  errno = 0;
  umap_fetch_and_pin((char *)p + pin_at, pin_len);
  CHECK(errno == 0);
  CHECK(resident_pages(p + pin_at, pin_len) == pin_len / sys_page);
  for (size_t i = 0; i < pin_len / 8; i++) ((uint64_t *)(p + pin_at))[i] += 9;
  for (int round = 0; round < 2; round++) check_view(p, pin_at, 0, 0);
  for (int round = 0; round < 2; round++)
    check_view(p + pin_at + pin_len, SIZE - pin_at - pin_len, pin_at + pin_len, 0);
  CHECK(resident_pages(p + pin_at, pin_len) == pin_len / sys_page);
  CHECK(resident_pages(p, pin_at) < pin_at / sys_page); /* the rest was evicted meanwhile */
  CHECK(umap_flush() == 0);
  CHECK(file_word(fd, pin_at) == pin_at + 9);
  CHECK(file_word(fd, pin_at + pin_len - 8) == pin_at + pin_len - 8 + 9);
  CHECK(file_word(fd, pin_at + pin_len) == pin_at + pin_len);
  CHECK(uunmap(p, SIZE) == 0);

  /* UMAP_FIXED: at exactly the address given, replacing what was there (here a PROT_NONE
   * reservation, as programs that place their data make). */
  CHECK(close(fd) == 0);
  fd = make_file(argv[1], SIZE, 0);
  size_t fixed_len = 1u << 20;
  char *reserved = mmap(NULL, fixed_len + 2 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(reserved != MAP_FAILED);
  char *at = (char *)(((uintptr_t)reserved + page) / page * page);
  p = umap(at, fixed_len, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 8 * page);
  CHECK(p == (unsigned char *)at);
  check_view(p, fixed_len, 8 * page, 0);
  CHECK(uunmap(p, fixed_len) == 0);
  CHECK(munmap(reserved, fixed_len + 2 * page) == 0);

  /* uunmap takes the length given to umap, or that length rounded up to the umap page size,
   * and no other. */
  len = 2 * page + 100;
  p = umap(NULL, len, PROT_READ, UMAP_PRIVATE, fd, 0);
  CHECK(p != UMAP_FAILED);
  CHECK_ERRNO(uunmap(p, 2 * page), == -1, EINVAL);
  CHECK_ERRNO(uunmap(p, 3 * page + sys_page), == -1, EINVAL);
  CHECK(uunmap(p, 3 * page) == 0);

  /* Prefetch: an address repeated, two in one page, pages of two regions, an address in the
   * last page past the region's length; exactly those pages are filled. */
  size_t a_len = 16 * page + 100; /* 17 pages, the last one partly past the length */
  unsigned char *a = umap(NULL, a_len, PROT_READ, UMAP_PRIVATE, fd, 0);
  unsigned char *b = umap(NULL, 8 * page, PROT_READ, UMAP_PRIVATE, fd, 64 * page);
  CHECK(a != UMAP_FAILED && b != UMAP_FAILED);
  struct umap_prefetch_item some[] = {
      {a + 3 * page}, {b + 2 * page + 5}, {a + 4 * page - 1}, {a + 16 * page + 200},
      {a + 3 * page}, {b + 2 * page},     {a + 4 * page},
  };
  errno = 0;
  umap_prefetch(sizeof some / sizeof some[0], some);
  CHECK(errno == 0);
  CHECK(resident_pages(a, 3 * page) == 0);
  CHECK(resident_pages(a + 3 * page, 2 * page) == 2 * page / sys_page);
  CHECK(resident_pages(a + 5 * page, 11 * page) == 0);
  CHECK(resident_pages(a + 16 * page, page) == page / sys_page);
  CHECK(resident_pages(b, 8 * page) == page / sys_page);
  CHECK(resident_pages(b + 2 * page, page) == page / sys_page);
  check_view(a + 3 * page, 2 * page, 3 * page, 0);
  check_view(b + 2 * page, page, 66 * page, 0);
  errno = 0;
  umap_prefetch(0, NULL); /* nothing to do */
  CHECK(errno == 0);
  CHECK(uunmap(a, a_len) == 0 && uunmap(b, 0) == 0);

  /* One array of twice as many pages as the buffer holds: split into requests the buffer
   * takes (each at most half of it), every page filled with the right bytes. */
  size_t n = 2 * umapcfg_get_max_pages_in_buffer();
  CHECK(n * page <= SIZE);
  p = umap(NULL, n * page, PROT_READ, UMAP_PRIVATE, fd, 0);
  CHECK(p != UMAP_FAILED);
  struct umap_prefetch_item *all = malloc(n * sizeof *all);
  CHECK(all != NULL);
  for (size_t i = 0; i < n; i++) all[n - 1 - i].page_base_addr = p + i * page;
  errno = 0;
  umap_prefetch((int)n, all);
  CHECK(errno == 0);
  check_view(p, n * page, 0, 0);
  free(all);
  CHECK(uunmap(p, 0) == 0);

  printf("offset ok: umap page %llu, system page %ld\n", (unsigned long long)page, sys_page);
  return 0;
}
