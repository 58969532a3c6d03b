/* Writes through a region and returns from main without umap_flush or uunmap: the library
 * writes the region back at exit, as the kernel does for a shared mmap. The Rust test reads
 * the file afterwards. With "fork", a child forked after the writes exits first: its exit
 * must neither hang nor write anything back (it has none of the engine's threads).
 * Usage: exit_flush FILE [fork] */
#include <umap.h>

#include <string.h>
#include <sys/wait.h>

#include "check.h"

#define SIZE (4u << 20)

int main(int argc, char **argv) {
  CHECK(argc == 2 || (argc == 3 && strcmp(argv[2], "fork") == 0));
  int fd = make_file(argv[1], SIZE, 0);
  uint64_t *w = umap(NULL, SIZE, PROT_READ | PROT_WRITE, UMAP_PRIVATE, fd, 0);
  CHECK(w != UMAP_FAILED);
  CHECK(close(fd) == 0);
  for (size_t i = 0; i < SIZE / 8; i++) w[i] = ~(uint64_t)(i * 8);
  printf("exit_flush wrote %u MiB\n", SIZE >> 20);
  if (argc == 3) {
    fflush(stdout);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) exit(0); /* runs the library's exit handler in the child */
    alarm(20);               /* a hung child fails the test, not the suite */
    int status;
    CHECK(waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    alarm(0);
    printf("exit_flush child exited\n");
  }
  return 0;
}
