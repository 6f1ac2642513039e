// Layer 5: runtime options, read once from MAPALLOC_OPTIONS
// ("key=value,key=value") without allocating. See README for every key.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "sample.h"
#include "size_classes.h"

#ifndef MAPALLOC_DEFAULT_MMAP_THRESHOLD
#define MAPALLOC_DEFAULT_MMAP_THRESHOLD 131072
#endif

namespace mapalloc {

// The threshold in effect for a wanted one: never above the biggest request
// the classes serve (1 MiB less a page, less the canary's record in secure
// builds).
constexpr size_t capped_threshold(size_t bytes) { return bytes < kMaxSmallRequest ? bytes : kMaxSmallRequest; }

// purge_delay_ms above this (35 years) counts as this: the purges multiply it.
constexpr uint64_t kMaxPurgeDelayMs = uint64_t(1) << 40;

struct Options {
  std::atomic<size_t> mmap_threshold{capped_threshold(MAPALLOC_DEFAULT_MMAP_THRESHOLD)};  // mallopt may change it
  uint64_t purge_delay_ms = 30;  // empty pages and cached large blocks older than this are purged
  size_t large_cache = 256 << 20;  // bytes of freed large mappings kept for reuse
  bool guard = true;              // PROT_NONE guard pages around arena chunks and large blocks
  bool stats = false;             // print statistics at exit
  bool verbose = false;           // print the options in effect at start-up
  bool madv_free = false;         // purge with MADV_FREE instead of MADV_DONTNEED
  bool random = false;            // hand out a page's fresh blocks in random order
  size_t quarantine = 0;          // bytes of freed small blocks each thread holds back (0: off)
  size_t sample = size_t(sample::kStartAllowance);  // guarded samples' start allowance; 0 (or guard=0): none at all
};
extern Options options;

constexpr size_t kMaxQuarantine = 1 << 30;

// Below one page-map slot two large blocks could share a slot's entry.
constexpr size_t kMinThreshold = 64 * 1024;
constexpr size_t kMaxThreshold = 1024 * 1024;  // accepted; capped_threshold applies

// Parses "k=v,k=v"; unknown keys and bad values get one warning line each.
void parse_options(const char* text);
// Finds MAPALLOC_OPTIONS in the environment (environ, else /proc/self/environ).
void load_options_from_environment();
bool set_mmap_threshold(size_t bytes);
// One line on stderr with every option's value (verbose=1).
void print_options();

}  // namespace mapalloc
