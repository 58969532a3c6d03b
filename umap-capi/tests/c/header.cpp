// The header compiles as C++ (extern "C" linkage, the struct usable without `struct`), and
// a C++ program links against the library and calls it.
#include <umap.h>

#include <cstdio>
#include <vector>

int main() {
  std::vector<umap_prefetch_item> items(2);
  items[0].page_base_addr = nullptr;
  void *(*map)(void *, size_t, int, int, int, off_t) = umap;
  int (*unmap)(void *, size_t) = uunmap;
  void (*prefetch)(int, umap_prefetch_item *) = umap_prefetch;
  void (*pin)(char *, uint64_t) = umap_fetch_and_pin;
  int (*flush)() = umap_flush;
  bool linked = map && unmap && prefetch && pin && flush;
  void *failed = UMAP_FAILED;
  std::printf("header.cpp ok: linked %d, page %ld, umap page %llu, fillers %llu, evictors %llu, "
              "buffer %llu pages, read-ahead %llu, watermarks %d/%d, events %llu, write %d, "
              "flags %d %d, failed %p\n",
              linked, umapcfg_get_system_page_size(),
              (unsigned long long)umapcfg_get_umap_page_size(),
              (unsigned long long)umapcfg_get_num_fillers(),
              (unsigned long long)umapcfg_get_num_evictors(),
              (unsigned long long)umapcfg_get_max_pages_in_buffer(),
              (unsigned long long)umapcfg_get_read_ahead(),
              umapcfg_get_evict_high_water_threshold(), umapcfg_get_evict_low_water_threshold(),
              (unsigned long long)umapcfg_get_max_fault_events(), umap_has_write_support(),
              UMAP_PRIVATE, UMAP_FIXED, failed);
  return 0;
}
