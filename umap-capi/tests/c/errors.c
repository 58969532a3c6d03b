/* Every misuse fails with the right errno (and the program goes on).
 * Usage: errors FILE     (default configuration or any valid one)
 *        errors badenv   (run with an invalid UMAP_* variable: every call fails, EINVAL)
 *        errors badmapped (run with UMAP_MAPPED_READS invalid: umap fails, EINVAL) */
#include <signal.h>
#include <sys/resource.h>

#include <umap.h>

#include "check.h"

#define FAILED == UMAP_FAILED
#define MINUS_ONE == -1

static void bad_environment(void) {
  int fd = open("/proc/self/exe", O_RDONLY);
  CHECK(fd >= 0);
  CHECK_ERRNO(umap(NULL, 4096, PROT_READ, UMAP_PRIVATE, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umapcfg_get_num_fillers(), == 0, EINVAL);
  CHECK_ERRNO(umapcfg_get_umap_page_size(), == 0, EINVAL);
  CHECK(umapcfg_get_system_page_size() == sysconf(_SC_PAGESIZE)); /* needs no configuration */
  CHECK(umap_flush() == 0);                                       /* nothing mapped */
  printf("errors badenv ok\n");
}

/* UMAP_MAPPED_READS is read when a file is mapped: the engine's configuration is fine. */
static void bad_mapped_reads(void) {
  int fd = open("/proc/self/exe", O_RDONLY);
  CHECK(fd >= 0);
  CHECK_ERRNO(umap(NULL, 4096, PROT_READ, UMAP_PRIVATE, fd, 0), FAILED, EINVAL);
  CHECK(umapcfg_get_num_fillers() > 0);
  printf("errors badmapped ok\n");
}

int main(int argc, char **argv) {
  CHECK(argc == 2);
  if (strcmp(argv[1], "badenv") == 0) {
    bad_environment();
    return 0;
  }
  if (strcmp(argv[1], "badmapped") == 0) {
    bad_mapped_reads();
    return 0;
  }
  size_t page = umapcfg_get_umap_page_size();
  size_t size = 64 * page;
  int fd = make_file(argv[1], size, 0);
  int ro = open(argv[1], O_RDONLY);
  int wo = open(argv[1], O_WRONLY);
  CHECK(ro >= 0 && wo >= 0);

  /* umap arguments */
  CHECK_ERRNO(umap(NULL, 0, PROT_READ, UMAP_PRIVATE, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_READ | PROT_EXEC, UMAP_PRIVATE, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_NONE, UMAP_PRIVATE, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, MAP_SHARED, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE | MAP_POPULATE, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE, fd, 100), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE, fd, -4096), FAILED, EINVAL);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE, -1, 0), FAILED, EBADF);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE, 1000, 0), FAILED, EBADF);
  CHECK_ERRNO(umap(NULL, size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, ro, 0), FAILED, EACCES);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE, wo, 0), FAILED, EACCES);
  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE, pipefd[0], 0), FAILED, EINVAL);

  /* A read-only region refuses nothing it should allow. */
  void *p = umap(NULL, size, PROT_READ, UMAP_PRIVATE, ro, 0);
  CHECK(p != UMAP_FAILED);

  /* UMAP_FIXED: an address, page aligned, not over another umap region */
  CHECK_ERRNO(umap(NULL, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0), FAILED, EINVAL);
  CHECK_ERRNO(umap((char *)p + size + 1, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0), FAILED,
              EINVAL);
  CHECK_ERRNO(umap((char *)p - page, 2 * page, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0),
              FAILED, EEXIST);
  CHECK_ERRNO(umap((char *)p + size - page, size, PROT_READ, UMAP_PRIVATE | UMAP_FIXED, fd, 0),
              FAILED, EEXIST);

  /* uunmap: only the start address, only the whole length */
  CHECK_ERRNO(uunmap((char *)p + page, 0), MINUS_ONE, EINVAL);
  CHECK_ERRNO(uunmap(p, size / 2), MINUS_ONE, EINVAL);
  CHECK_ERRNO(uunmap(NULL, 0), MINUS_ONE, EINVAL);
  CHECK(((uint64_t *)p)[8] == 64); /* still mapped after the refusals */

  /* prefetch and pin outside any region, or too much */
  struct umap_prefetch_item outside = {(void *)&page};
  errno = 0;
  umap_prefetch(1, &outside);
  CHECK(errno == EINVAL);
  errno = 0;
  umap_prefetch(-1, &outside);
  CHECK(errno == EINVAL);
  errno = 0;
  umap_fetch_and_pin((char *)&page, 8);
  CHECK(errno == EINVAL);
  errno = 0;
  umap_fetch_and_pin((char *)p + page, size); /* runs past the end */
  CHECK(errno == EINVAL);
  uint64_t buffer = umapcfg_get_max_pages_in_buffer() * page;
  CHECK(buffer <= size); /* run with a buffer smaller than the file */
  errno = 0;
  umap_fetch_and_pin((char *)p, buffer); /* the whole buffer: no room left for faults */
  CHECK(errno == ENOMEM);
  errno = 0;
  umap_fetch_and_pin((char *)p, page); /* a page is fine */
  CHECK(errno == 0);

  CHECK(uunmap(p, size) == 0);
  CHECK_ERRNO(uunmap(p, size), MINUS_ONE, EINVAL); /* twice */

  /* A write-back that fails (the file may not grow: RLIMIT_FSIZE) fails uunmap with the
   * file's errno and unmaps nothing; once the file can grow, uunmap writes and unmaps. */
  CHECK(signal(SIGXFSZ, SIG_IGN) != SIG_ERR);
  uint64_t *w = umap(NULL, 2 * size, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
  CHECK(w != UMAP_FAILED);
  for (size_t i = size / 8; i < 2 * size / 8; i++) w[i] = i * 8 + 5; /* past the end */
  struct rlimit old, small = {size, size};
  CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
  small.rlim_max = old.rlim_max;
  CHECK(setrlimit(RLIMIT_FSIZE, &small) == 0);
  CHECK_ERRNO(uunmap(w, 2 * size), MINUS_ONE, EFBIG);
  /* (Not touched while no dirty page can be written: a fault could wait for room.) */
  CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0);
  CHECK(w[size / 8] == size + 5); /* still mapped, data intact */
  CHECK(uunmap(w, 2 * size) == 0);
  CHECK(file_word(fd, 2 * size - 8) == 2 * size - 8 + 5);

  printf("errors ok\n");
  return 0;
}
