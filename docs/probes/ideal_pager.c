// The fastest copying pager this machine allows, for a cold sequential scan: how close can any
// pager built on pread + UFFDIO_COPY (or UFFDIO_COPY from a mapping of the file) come to mmap?
//
// No eviction (the region holds the whole file), no page table, no statistics: each reader
// thread faults on its own half of the region; the fault becomes SIGBUS in that thread
// (UFFD_FEATURE_SIGBUS, no hand-off at all), whose handler reads the 1 MiB run around the
// address and installs it with one UFFDIO_COPY. Every variant touches one byte per 4 KiB, as
// the throughput bench's seq-read does, and drops the file's page cache first.
//
//   cc -O2 -Wall -pthread -o /tmp/ideal_pager docs/probes/ideal_pager.c
//   /tmp/ideal_pager FILE [rounds]     (FILE: 1 GiB or more, on the disk under test)
//
// Variants per round: mmap (kernel), pread+copy (scratch buffer per thread), mapcopy
// (UFFDIO_COPY straight from a read-only shared mapping of the file: one copy, no pread), and
// mapcopy+ahead (the same, with a helper thread that populates the source mapping
// (MADV_POPULATE_READ) up to 16 MiB ahead of each reader's last fault, so that the disk and
// the copies overlap).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RUN (1UL << 20)
#define THREADS 2

static int file_fd, uffd;
static size_t size;
static char *region, *source; // source: a mapping of the file (mapcopy)
static int use_map;
static __thread char *scratch;
// mapcopy+ahead: the last faulting offset of each reader's half, and the helper's stop flag.
static _Atomic size_t progress[THREADS];
static _Atomic int helper_stop;
#define AHEAD (16UL << 20)
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

// Populates the source mapping, a run at a time, up to AHEAD beyond each reader's last fault.
static void *helper(void *unused) {
    (void)unused;
    size_t populated[THREADS];
    for (int t = 0; t < THREADS; t++) populated[t] = size / THREADS * t;
    while (!helper_stop) {
        int did = 0;
        for (int t = 0; t < THREADS; t++) {
            size_t end = size / THREADS * (t + 1);
            size_t want = progress[t] + AHEAD;
            if (want > end) want = end;
            if (populated[t] < progress[t]) populated[t] = progress[t];
            if (populated[t] < want) {
                madvise(source + populated[t], RUN, MADV_POPULATE_READ);
                populated[t] += RUN;
                did = 1;
            }
        }
        if (!did) {
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        }
    }
    return NULL;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec * 1e-6;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void on_bus(int sig, siginfo_t *info, void *ctx) {
    (void)sig;
    (void)ctx;
    size_t off = ((char *)info->si_addr - region) & ~(RUN - 1);
    progress[off / (size / THREADS)] = off;
    size_t len = size - off < RUN ? size - off : RUN;
    const char *src;
    if (use_map) {
        src = source + off;
    } else {
        size_t done = 0;
        while (done < len) {
            ssize_t n = pread(file_fd, scratch + done, len - done, off + done);
            if (n <= 0) _exit(3);
            done += n;
        }
        src = scratch;
    }
    struct uffdio_copy c = {.dst = (uintptr_t)(region + off),
                            .src = (uintptr_t)src,
                            .len = len,
                            .mode = 0};
    if (ioctl(uffd, UFFDIO_COPY, &c) && errno != EEXIST) _exit(4);
}

static void drop_cache(void) {
    fdatasync(file_fd);
    posix_fadvise(file_fd, 0, 0, POSIX_FADV_DONTNEED);
}

struct share {
    const volatile char *base;
    size_t from, to;
    unsigned long sum;
};

static void *reader(void *p) {
    struct share *s = p;
    scratch = aligned_alloc(4096, RUN);
    memset(scratch, 0, RUN);
    unsigned long sum = 0;
    for (size_t o = s->from; o < s->to; o += 4096) sum += s->base[o];
    s->sum = sum;
    free(scratch);
    return NULL;
}

static double scan(const char *base, double *cpu_s) {
    pthread_t t[THREADS];
    struct share sh[THREADS];
    double c0 = cpu(), t0 = now();
    for (int i = 0; i < THREADS; i++) {
        sh[i] = (struct share){base, size / THREADS * i, size / THREADS * (i + 1), 0};
        pthread_create(&t[i], NULL, reader, &sh[i]);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(t[i], NULL);
    *cpu_s = cpu() - c0;
    return now() - t0;
}

static double run_mmap(double *c) {
    drop_cache();
    char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, file_fd, 0);
    if (m == MAP_FAILED) die("mmap");
    double t = scan(m, c);
    munmap(m, size);
    return t;
}

// One pager run. mapped: 0 pread + copy, 1 mapcopy, 2 mapcopy+ahead.
static double run_uffd(int mapped, double *c) {
    drop_cache();
    use_map = mapped;
    region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (region == MAP_FAILED) die("mmap region");
    if (mapped) {
        source = mmap(NULL, size, PROT_READ, MAP_SHARED, file_fd, 0);
        if (source == MAP_FAILED) die("mmap source");
    }
    uffd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (uffd < 0) die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_SIGBUS};
    if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API");
    struct uffdio_register reg = {.range = {(uintptr_t)region, size},
                                  .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
    pthread_t h;
    helper_stop = 0;
    for (int i = 0; i < THREADS; i++) progress[i] = size / THREADS * i;
    if (mapped == 2) pthread_create(&h, NULL, helper, NULL);
    double t = scan(region, c);
    if (mapped == 2) {
        helper_stop = 1;
        pthread_join(h, NULL);
    }
    close(uffd);
    munmap(region, size);
    if (mapped) munmap(source, size);
    return t;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE [rounds]\n", argv[0]);
        return 2;
    }
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    file_fd = open(argv[1], O_RDONLY);
    if (file_fd < 0) die(argv[1]);
    struct stat st;
    fstat(file_fd, &st);
    size = st.st_size & ~(RUN - 1);
    struct sigaction sa = {.sa_sigaction = on_bus, .sa_flags = SA_SIGINFO};
    sigaction(SIGBUS, &sa, NULL);
    printf("%zu MiB, %d threads, 1 MiB runs; seconds (CPU seconds of the process), speed "
           "relative to mmap of the round (its time / this time)\n",
           size >> 20, THREADS);
    for (int r = 0; r < rounds; r++) {
        double cm, cp, cc;
        double m = run_mmap(&cm);
        double p = run_uffd(0, &cp);
        double c = run_uffd(1, &cc);
        double ca;
        double a = run_uffd(2, &ca);
        printf("round %d: mmap %.3f (%.2f)  pread+copy %.3f (%.2f) %.2fx  mapcopy %.3f (%.2f) "
               "%.2fx  mapcopy+ahead %.3f (%.2f) %.2fx\n",
               r + 1, m, cm, p, cp, m / p, c, cc, m / c, a, ca, m / a);
        fflush(stdout);
    }
    return 0;
}
