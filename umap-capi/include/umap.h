/*
 * umap.h: the C API of umap-rs's libumap, declared as in LLNL umap's umap.h so that
 * programs written against LLNL umap compile and link unchanged.
 *
 * Configuration comes from the UMAP_* environment variables (UMAP_PAGESIZE, UMAP_BUFSIZE,
 * UMAP_PAGE_FILLERS, UMAP_PAGE_EVICTORS, UMAP_EVICT_HIGH_WATER_THRESHOLD,
 * UMAP_EVICT_LOW_WATER_THRESHOLD, UMAP_MAX_FAULT_EVENTS, UMAP_READ_AHEAD, UMAP_MONITOR_FREQ,
 * UMAP_LOG_LEVEL, UMAP_RECYCLE_PAGES, UMAP_SIGNAL_FAULTS; the README's configuration table
 * has them all), read once, at the first call. A value that is set but not valid makes every
 * call that needs the configuration fail with errno EINVAL and a message on stderr
 * (umap_flush, umap_has_write_support and umapcfg_get_system_page_size do not need it).
 *
 * UMAP_MAPPED_READS=1, read at each umap call, opens the file with mapped reads: the runs of
 * a sequential scan are copied straight from a read-only mapping of the file, which a helper
 * thread maps ahead of the scan (faster scans; the pages mapped around each scan count in the
 * resident set, outside the buffer). Any value but 0 or 1 makes umap fail with EINVAL.
 *
 * UMAP_SIGNAL_FAULTS=1 serves each fault on the faulting thread, in a SIGBUS handler the
 * library installs (several times faster for random access). Then a system call that reads
 * or writes a page of a region that is not resident (read(fd, region, n), write, ...) fails
 * with EFAULT instead of waiting: touch or umap_prefetch such pages first. Install any
 * SIGBUS handler of your own before the first umap call (it still gets every SIGBUS that is
 * not a fault on a region), never after, and do not block SIGBUS in threads that touch
 * regions.
 *
 * fork(): a child gets a copy of the regions but none of the library's threads. It must not
 * touch the regions or call the library; at its exit nothing is written back (the parent's
 * regions are the parent's to write).
 *
 * Errors: functions that return a pointer return UMAP_FAILED, those that return int return
 * -1; either way errno says why (EINVAL, EBADF, EACCES, ENOMEM, EPERM, EIO ...) and a
 * message is printed on stderr. Functions that return void set errno on failure (set errno
 * to 0 before the call to tell). Nothing aborts the program.
 */
#ifndef UMAP_RS_UMAP_H
#define UMAP_RS_UMAP_H

#include <stddef.h>    /* size_t */
#include <stdint.h>    /* uint64_t */
#include <sys/mman.h>  /* PROT_READ, PROT_WRITE, MAP_PRIVATE, MAP_FIXED */
#include <sys/types.h> /* off_t */

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Maps `length` bytes of the file open as `fd`, from byte `offset`, into memory paged in
 * user space (faults are served by the library's filler threads; at most the buffer,
 * UMAP_BUFSIZE pages, is resident at once). Returns the start of the region, or UMAP_FAILED.
 *
 * - prot: PROT_READ, or PROT_READ | PROT_WRITE (then written pages are written back to the
 *   file on eviction, umap_flush and uunmap; fd must be open read-write). PROT_WRITE alone
 *   means PROT_READ | PROT_WRITE, as it does for mmap on x86.
 * - flags: UMAP_PRIVATE, optionally | UMAP_FIXED: map at exactly `addr` (a multiple of the
 *   system page size), replacing whatever is mapped there as mmap(MAP_FIXED) does, unless it
 *   is another umap region (EEXIST). If another thread is unmapping a region there, it waits
 *   for that uunmap to end (then maps, or fails with EEXIST if that uunmap failed).
 * - fd: the library keeps its own duplicate; the caller may close `fd` at once.
 * - offset: a multiple of the system page size. length need not be a multiple of any page
 *   size; bytes past the end of the file read as zeros.
 */
void *umap(void *addr, size_t length, int prot, int flags, int fd, off_t offset);

/*
 * Writes back the region that starts at `addr`, syncs its file, and unmaps it. `length` is
 * 0 or the length given to umap (or that length rounded up to the umap page size): partial
 * unmapping is not supported. Returns 0, or -1 with errno (EINVAL: no region starts at
 * addr, or another length). If the write-back fails, -1 with the file's errno (EIO,
 * ENOSPC, EFBIG ...) and nothing is unmapped: the region stays mapped with its data, for a
 * later uunmap or umap_flush.
 * Threads: uunmap waits for umap_fetch_and_pin calls on the region running in other threads
 * to return (blocking only itself: other regions map and unmap meanwhile). Once it has
 * begun, pins, prefetches and uunmaps of the region fail with EINVAL.
 */
int uunmap(void *addr, size_t length);

/* Writes back the dirty pages of every region and syncs their files. 0, or -1 and errno. */
int umap_flush(void);

/* One page to prefetch: any address inside the page will do. */
struct umap_prefetch_item {
  void *page_base_addr;
};

/* 1: regions mapped with PROT_WRITE write back to their files. */
int umap_has_write_support(void);

/*
 * Fills the umap pages that hold the `npages` addresses, and returns when they have been
 * filled (they may be evicted later, as any page: a request for more than the buffer's
 * low-water share cannot stay resident whole, and its later pages evict its earlier ones).
 * Addresses outside every region set errno EINVAL.
 */
void umap_prefetch(int npages, struct umap_prefetch_item *page_array);

/*
 * Fills the umap pages overlapping [paddr, paddr + size) and keeps them resident (never
 * evicted) until the region is unmapped; writes to them are written back by umap_flush and
 * uunmap. The pinned pages count against the buffer: a pin that would leave too little room
 * for faults is refused with errno ENOMEM. The range must lie within one region (EINVAL).
 * A page whose store read failed (poisoned) cannot be pinned (EIO).
 */
void umap_fetch_and_pin(char *paddr, uint64_t size);

/* Configuration (from the environment, or the defaults); 0 with errno EINVAL if invalid. */
long umapcfg_get_system_page_size(void);
uint64_t umapcfg_get_umap_page_size(void);
uint64_t umapcfg_get_max_fault_events(void);
uint64_t umapcfg_get_num_fillers(void);
uint64_t umapcfg_get_num_evictors(void);
uint64_t umapcfg_get_max_pages_in_buffer(void);
uint64_t umapcfg_get_read_ahead(void);
int umapcfg_get_evict_low_water_threshold(void);
int umapcfg_get_evict_high_water_threshold(void);

#ifdef __cplusplus
}
#endif

/* flags */
#define UMAP_PRIVATE MAP_PRIVATE
#define UMAP_FIXED MAP_FIXED

/* umap's error return */
#define UMAP_FAILED ((void *)-1)

#endif /* UMAP_RS_UMAP_H */
