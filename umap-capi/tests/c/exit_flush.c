/* Writes through a region and returns from main without umap_flush or uunmap: the library
 * writes the region back at exit, as the kernel does for a shared mmap. The Rust test reads
 * the file afterwards. Usage: exit_flush FILE */
#include <umap.h>

#include "check.h"

#define SIZE (4u << 20)

int main(int argc, char **argv) {
  CHECK(argc == 2);
  int fd = make_file(argv[1], SIZE, 0);
  uint64_t *w = umap(NULL, SIZE, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
  CHECK(w != UMAP_FAILED);
  CHECK(close(fd) == 0);
  for (size_t i = 0; i < SIZE / 8; i++) w[i] = ~(uint64_t)(i * 8);
  printf("exit_flush wrote %u MiB\n", SIZE >> 20);
  return 0;
}
