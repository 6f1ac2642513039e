// libFuzzer target for mapalloc's prefixed API (built and run by meson.build
// here, suite 'fuzz'; needs clang).
//
// An input is a program: a sequence of operations, each an opcode byte and
// fixed-width operands, over a table of 64 slots plus a pool of up to 4096
// "bulk" blocks (enough to fill and empty whole pages of the small classes).
// A shadow model keeps every live block's requested size, usable size and a
// fill seed. Each block is filled with a pattern derived from (seed, offset)
// when allocated, and verified in full before it is freed or reallocated and
// at the end of the input (after a realloc the preserved prefix is verified,
// then the block is refilled under a new seed). Any disagreement with the
// model or with the glibc/POSIX semantics of the call traps at once.
// Everything is freed at the end of each input, so inputs are independent.
//
// Besides contents, the model checks: alignment (16, or what was asked);
// usable_size >= size and stable while the block lives; no two live blocks
// overlap; calloc zeroes; realloc(p, 0) frees and returns NULL; failed
// allocations return NULL with errno ENOMEM/EINVAL and leave the old block of
// a failed realloc intact; and mapalloc_owns(q) against the model's exact
// answer (q is the start of a live block) for live blocks, freed blocks and
// addresses near live blocks. Only this harness allocates through mapalloc in
// the process (libFuzzer uses glibc's malloc), so the model knows every live
// block, and the statistics must count exactly the model's live blocks.
//
// Input format (a missing byte reads as 0). Opcode = byte % 32, per kOps:
//    0- 5 malloc          slot size             size: 4 bytes, see read_size
//    6- 7 calloc          slot n size           (n elements of size / n)
//    8-11 realloc         slot size             (realloc(NULL, size) if empty)
//   12    realloc(p, 0)   slot
//   13    memalign        slot align size       align: 1 byte, see read_align
//   14    aligned_alloc   slot align size
//   15    posix_memalign  slot align size
//   16-18 free            slot
//   19    free_sized      slot                  (free_aligned_sized if aligned)
//   20-21 query           slot a b              usable_size, owns probes
//   22    scribble        slot                  write the slack [size, usable)
//   23    verify          slot                  (slot byte >= 192: verify all, 4 per input)
//   24    reallocarray    slot n size
//   25    valloc/pvalloc  slot kind size
//   26    bulk alloc      count size            (count + 1) * 16 blocks, <= 1 MiB
//   27    bulk free       mode                  every stride-th, either order
//   28    collect                               then verify all (same budget)
//   29    mmap threshold  v                     64 KiB * (1 + v % 16), or invalid
//   30    stats
//   31    error cases     kind slot
// Slots are byte % 64.
//
// MAPALLOC_FUZZ_LAX_OWNS=1 in the environment tolerates owns() returning 1 for
// an address near a live block that is no live block (see the report in the
// fuzz test's history: blocks never handed out yet); everything else stays.
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mapalloc.h"

namespace {

constexpr size_t kSlots = 64;
constexpr size_t kBulkMax = 4096;
constexpr size_t kBulkBytes = size_t(1) << 20;
constexpr size_t kMaxSmallSize = 300 * 1024;

enum class Kind : uint8_t { kMalloc, kCalloc, kRealloc, kAligned, kPage };

struct Slot {
  unsigned char* p;
  size_t size;    // requested
  size_t usable;  // mapalloc_usable_size at allocation
  size_t align;   // > 16 for the aligned functions (free_aligned_sized)
  uint64_t seed;
};

struct BulkBlock {
  unsigned char* p;
  size_t size;
  uint64_t seed;
};

Slot slots[kSlots];
BulkBlock bulk[kBulkMax];
size_t bulk_count = 0;
uint64_t seed_counter = 0;
size_t default_threshold = 0;
bool lax_owns = false;
int stack_marker;

[[noreturn]] __attribute__((noinline)) void fail(const char* what, const void* p, size_t a, size_t b) {
  fprintf(stderr, "alloc_fuzz: %s (ptr %p, %zu, %zu)\n", what, p, a, b);
  fflush(stderr);
  __builtin_trap();
}

#define CHECK(cond, what, p, a, b) \
  do {                             \
    if (!(cond)) fail(what, p, size_t(a), size_t(b)); \
  } while (0)

// The harness's own loops over block contents: not worth coverage feedback,
// and comparison tracing would make them the bulk of the run time.
#define NO_COVERAGE __attribute__((no_sanitize("coverage"), noinline))

// ---- fill pattern: word i of a block (little-endian, the last one cut
// short) is seed + i * step(seed): a function of (seed, offset), so that the
// prefix a realloc preserves still matches the old seed at the same offsets;
// and one add per word, so that verifying megabytes stays cheap.

inline uint64_t mix(uint64_t x) {
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return x;
}

inline uint64_t step_of(uint64_t seed) { return mix(seed ^ 0x9E3779B97F4A7C15ull) | 1; }

NO_COVERAGE void fill(unsigned char* p, size_t n, uint64_t seed) {
  uint64_t w = seed, step = step_of(seed);
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++, w += step) memcpy(p + 8 * i, &w, 8);
  if (n % 8) memcpy(p + 8 * words, &w, n % 8);
}

[[noreturn]] NO_COVERAGE void mismatch(const unsigned char* p, size_t n, size_t at, uint64_t want, const char* what) {
  unsigned char bytes[8];
  memcpy(bytes, &want, 8);
  size_t j = 0;
  while (at + j < n && j < 8 && p[at + j] == bytes[j]) j++;
  fail(what, p, at + j, n);
}

// Traps at the first byte of [0, n) that differs from the pattern.
NO_COVERAGE void verify(const unsigned char* p, size_t n, uint64_t seed, const char* what) {
  uint64_t w = seed, step = step_of(seed);
  size_t words = n / 8, i = 0;
  for (; i < words; i++, w += step) {
    uint64_t got;
    memcpy(&got, p + 8 * i, 8);
    if (got != w) break;
  }
  if (i < words) mismatch(p, n, 8 * i, w, what);
  if (n % 8) {
    uint64_t got = 0, want = 0;
    memcpy(&got, p + 8 * words, n % 8);
    memcpy(&want, &w, n % 8);
    if (got != want) mismatch(p, n, 8 * words, w, what);
  }
}

uint64_t new_seed() {
  seed_counter++;
  return mix(0x5eed5eed5eed5eedull + seed_counter * 0x9E3779B97F4A7C15ull);
}

// ---- the input reader

struct Reader {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  bool done() const { return pos >= size; }
  uint8_t u8() { return pos < size ? data[pos++] : 0; }
  uint32_t u24() {
    uint32_t v = u8();
    v |= uint32_t(u8()) << 8;
    return v | uint32_t(u8()) << 16;
  }
};

// Sizes 0 .. ~300 KiB, biased toward small ones, with extra weight on the
// edges of the size classes and of the default mmap threshold (128 KiB).
size_t read_size(Reader& r) {
  uint8_t sel = r.u8();
  uint32_t v = r.u24();
  switch (sel & 15) {
    case 0: case 1: case 2: case 3: case 4: case 5:
      return v % 129;
    case 6: case 7: case 8:
      return v % 1025;
    case 9: case 10:
      return v % 16385;
    case 11:
      return v % (128 * 1024 + 1);
    case 12:
      return 128 * 1024 - 64 + v % 129;  // around the default threshold
    case 13:
      return 128 * 1024 + 1 + v % (kMaxSmallSize - 128 * 1024);
    case 14: {
      // Around a power of two, 1 B .. 256 KiB.
      size_t base = size_t(1) << (v % 19);
      size_t delta = (v >> 8) % 33;
      return base + delta >= 16 ? base + delta - 16 : 0;
    }
    default: {
      // Around a size class boundary: 2^k + j * 2^(k-3) +- 1, k = 7..18.
      unsigned k = 7 + v % 12, j = (v >> 4) % 9;
      size_t s = (size_t(1) << k) + j * (size_t(1) << (k - 3));
      return s - 1 + (v >> 8) % 3;
    }
  }
}

// 1 .. 1 MiB, mostly 16 .. 4 KiB.
size_t read_align(Reader& r) {
  uint8_t a = r.u8();
  unsigned log = a < 128 ? 4 + a % 9 : a % 21;  // 16..4096, or 1..1 MiB
  return size_t(1) << log;
}

// ---- the model

// Live blocks of the model; *sized gets those of a nonzero size.
size_t live_count(size_t* sized = nullptr) {
  size_t n = bulk_count, with_size = 0;
  for (size_t i = 0; i < bulk_count; i++) with_size += bulk[i].size != 0;
  for (const Slot& s : slots) {
    n += s.p != nullptr;
    with_size += s.p && s.size;
  }
  if (sized) *sized = with_size;
  return n;
}

NO_COVERAGE bool is_live_start(uintptr_t q) {
  for (const Slot& s : slots)
    if (s.p && reinterpret_cast<uintptr_t>(s.p) == q) return true;
  for (size_t i = 0; i < bulk_count; i++)
    if (reinterpret_cast<uintptr_t>(bulk[i].p) == q) return true;
  return false;
}

// owns(q) must be exactly "q is the start of a live block". `near` marks a
// probe at an arbitrary address (tolerated false positive in lax mode).
void probe_owns(uintptr_t q, bool near) {
  int expected = is_live_start(q) ? 1 : 0;
  int got = mapalloc_owns(reinterpret_cast<const void*>(q));
  if (got == expected) return;
  if (near && lax_owns && got == 1) return;
  fail(got ? "owns() is 1 for an address that is no live block" : "owns() is 0 for a live block",
       reinterpret_cast<const void*>(q), size_t(got), size_t(expected));
}

__attribute__((no_sanitize("coverage"))) inline bool overlaps(uintptr_t a, size_t an, uintptr_t b, size_t bn) {
  if (an == 0) an = 1;
  if (bn == 0) bn = 1;
  return a < b + bn && b < a + an;
}

// Traps if [p, p + n) overlaps a live slot block other than self, or (with
// bulk) a live bulk block.
NO_COVERAGE void check_apart(const unsigned char* p, size_t n, const Slot* self, bool with_bulk) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  for (const Slot& s : slots) {
    if (&s == self || !s.p) continue;
    if (overlaps(a, n, reinterpret_cast<uintptr_t>(s.p), s.usable))
      fail("new block overlaps a live block", p, n, reinterpret_cast<uintptr_t>(s.p));
  }
  if (!with_bulk) return;
  for (size_t i = 0; i < bulk_count; i++) {
    const BulkBlock& b = bulk[i];
    if (overlaps(a, n, reinterpret_cast<uintptr_t>(b.p), b.size))
      fail("new block overlaps a live bulk block", p, n, reinterpret_cast<uintptr_t>(b.p));
  }
}

// A block just handed out (or moved by realloc): aligned, usable, and apart
// from every other live block. Returns its usable size.
size_t check_new_block(const unsigned char* p, size_t size, size_t align, const Slot* self) {
  CHECK(p != nullptr, "allocation failed", p, size, align);
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  size_t need = align > 16 ? align : 16;
  CHECK(a % need == 0, "misaligned block", p, size, need);
  size_t usable = mapalloc_usable_size(p);
  CHECK(usable >= size, "usable_size below the requested size", p, usable, size);
  CHECK(mapalloc_owns(p) == 1, "owns() is 0 for a new block", p, size, 0);
  check_apart(p, usable, self, true);
  return usable;
}

void verify_slot(const Slot& s, const char* what) {
  if (!s.p) return;
  verify(s.p, s.size, s.seed, what);
}

// Frees a slot's block (verified first) by one of the free functions.
void free_slot(Slot& s, unsigned how) {
  if (!s.p) {
    mapalloc_free(nullptr);
    return;
  }
  verify_slot(s, "block changed before free");
  unsigned char* p = s.p;
  size_t size = s.size, align = s.align;
  s = Slot{};
  switch (how % 3) {
    case 0: mapalloc_free(p); break;
    case 1: mapalloc_free_sized(p, size); break;
    default:
      if (align > 16) {
        mapalloc_free_aligned_sized(p, align, size);
      } else {
        mapalloc_free_sized(p, size);
      }
      break;
  }
  probe_owns(reinterpret_cast<uintptr_t>(p), false);  // freed, nothing allocated since
}

void install(Slot& s, unsigned char* p, size_t size, size_t align) {
  size_t usable = check_new_block(p, size, align, &s);
  s.p = p;
  s.size = size;
  s.usable = usable;
  s.align = align;
  s.seed = new_seed();
  fill(p, size, s.seed);
}

NO_COVERAGE void check_zero(const unsigned char* p, size_t n) {
  size_t i = 0;
  for (uint64_t w; i + 8 <= n; i += 8) {
    memcpy(&w, p + i, 8);
    if (w) break;
  }
  for (; i < n; i++)
    if (p[i]) fail("calloc block not zeroed", p, i, n);
}

// ---- operations

void op_malloc(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  size_t size = read_size(r);
  free_slot(s, 0);
  install(s, static_cast<unsigned char*>(mapalloc_malloc(size)), size, 0);
}

void op_calloc(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  size_t n = r.u8() % 17;  // 0 elements too
  size_t size = read_size(r);
  size_t elem = n ? size / n : size;
  size_t total = n * elem;
  free_slot(s, 1);
  auto* p = static_cast<unsigned char*>(mapalloc_calloc(n, elem));
  CHECK(p != nullptr, "calloc failed", p, n, elem);
  check_zero(p, total);
  install(s, p, total, 0);
}

// realloc and reallocarray share the model: `fn` performs the call.
template <typename Fn>
void do_realloc(Slot& s, size_t size, Fn fn) {
  if (!s.p) {
    install(s, static_cast<unsigned char*>(fn(nullptr)), size, 0);
    return;
  }
  verify_slot(s, "block changed before realloc");
  unsigned char* old = s.p;
  auto* q = static_cast<unsigned char*>(fn(old));
  if (size == 0) {
    CHECK(q == nullptr, "realloc(p, 0) returned a block", q, 0, 0);
    s = Slot{};
    probe_owns(reinterpret_cast<uintptr_t>(old), false);
    return;
  }
  CHECK(q != nullptr, "realloc failed", old, s.size, size);
  verify(q, s.size < size ? s.size : size, s.seed, "realloc lost the contents");
  install(s, q, size, 0);  // realloc keeps no alignment beyond malloc's
  if (q != old) probe_owns(reinterpret_cast<uintptr_t>(old), false);  // freed, nothing allocated since
}

void op_realloc(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  size_t size = read_size(r);
  do_realloc(s, size, [size](void* p) { return mapalloc_realloc(p, size); });
}

void op_realloc_zero(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  do_realloc(s, 0, [](void* p) { return mapalloc_realloc(p, 0); });
}

void op_reallocarray(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  size_t n = r.u8() % 17;
  size_t size = read_size(r);
  size_t elem = n ? size / n : size;
  do_realloc(s, n * elem, [n, elem](void* p) { return mapalloc_reallocarray(p, n, elem); });
}

void op_aligned(Reader& r, int which) {
  Slot& s = slots[r.u8() % kSlots];
  size_t align = read_align(r);
  size_t size = read_size(r);
  free_slot(s, 2);
  void* p = nullptr;
  switch (which) {
    case 0: {
      // memalign also takes alignments that are no power of two: glibc
      // rounds them up (to at least 16).
      size_t asked = align > 32 && (size & 1) ? align - 16 : align;
      p = mapalloc_memalign(asked, size);
      break;
    }
    case 1:
      p = mapalloc_aligned_alloc(align, size);
      break;
    default: {
      if (align < sizeof(void*)) align = sizeof(void*);
      int rc = mapalloc_posix_memalign(&p, align, size);
      CHECK(rc == 0, "posix_memalign failed", p, align, size_t(rc));
      break;
    }
  }
  install(s, static_cast<unsigned char*>(p), size, align);
}

void op_page_aligned(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  bool pv = r.u8() & 1;
  size_t size = read_size(r);
  free_slot(s, 0);
  void* p = pv ? mapalloc_pvalloc(size) : mapalloc_valloc(size);
  install(s, static_cast<unsigned char*>(p), size, 4096);
  if (pv) {
    size_t rounded = size ? (size + 4095) & ~size_t(4095) : 4096;
    CHECK(s.usable >= rounded, "pvalloc usable_size below whole pages", p, s.usable, rounded);
  }
}

void op_free(Reader& r) {
  free_slot(slots[r.u8() % kSlots], 0);
}

void op_free_sized(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  free_slot(s, s.align > 16 ? 2 : 1);
}

void op_query(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  uint8_t a = r.u8(), b = r.u8();
  CHECK(mapalloc_usable_size(nullptr) == 0, "usable_size(NULL) is not 0", nullptr, 0, 0);
  probe_owns(0, false);
  probe_owns(reinterpret_cast<uintptr_t>(&stack_marker), false);
  probe_owns(reinterpret_cast<uintptr_t>(&s), false);
  if (!s.p) return;
  size_t usable = mapalloc_usable_size(s.p);
  CHECK(usable == s.usable, "usable_size changed while the block lived", s.p, usable, s.usable);
  uintptr_t p = reinterpret_cast<uintptr_t>(s.p);
  probe_owns(p, false);
  probe_owns(p + 1, false);  // never a block start (they are 16-aligned)
  probe_owns(p + 8, false);
  // Addresses near the block: neighbours, or blocks of the same page not
  // handed out, or other pages and mappings.
  size_t step = usable > 16 ? (usable + 15) & ~size_t(15) : 16;
  probe_owns(p + step * (1 + a), true);
  probe_owns(p - step * (1 + (a >> 4)), true);
  probe_owns(p + (uintptr_t(b) << 12), true);
  probe_owns(p + (uintptr_t(b) << 16), true);
}

void op_scribble(Reader& r) {
  Slot& s = slots[r.u8() % kSlots];
  if (!s.p || s.usable <= s.size) return;
  // malloc_usable_size promises these bytes are the caller's to use.
  memset(s.p + s.size, 0xA5, s.usable - s.size);
}

// Whole-model verifications besides the final one: a few per input, so that
// an input repeating them cannot spend its time re-reading megabytes.
constexpr unsigned kVerifyAllBudget = 4;
unsigned verify_all_left = 0;

void verify_all(const char* what) {
  if (!verify_all_left) return;
  verify_all_left--;
  for (const Slot& s : slots) verify_slot(s, what);
  for (size_t i = 0; i < bulk_count; i++) verify(bulk[i].p, bulk[i].size, bulk[i].seed, what);
}

void op_verify(Reader& r) {
  uint8_t b = r.u8();
  if (b >= 192) {
    verify_all("block changed (verify all)");
  } else {
    verify_slot(slots[b % kSlots], "block changed (verify)");
  }
}

void op_bulk_alloc(Reader& r) {
  size_t count = (size_t(r.u8()) + 1) * 16;
  size_t size = read_size(r);
  if (size > 4096) size %= 4097;
  size_t per = size > 16 ? size : 16;
  if (count > kBulkBytes / per) count = kBulkBytes / per;
  if (count > kBulkMax - bulk_count) count = kBulkMax - bulk_count;
  for (size_t i = 0; i < count; i++) {
    bool zeroed = (i & 7) == 7;
    auto* p = static_cast<unsigned char*>(zeroed ? mapalloc_calloc(1, size) : mapalloc_malloc(size));
    CHECK(p != nullptr, "bulk allocation failed", p, size, i);
    CHECK(reinterpret_cast<uintptr_t>(p) % 16 == 0, "misaligned bulk block", p, size, 16);
    if (zeroed) check_zero(p, size);
    // Overlaps among bulk blocks show as broken patterns; check the slots.
    check_apart(p, size, nullptr, false);
    BulkBlock& b = bulk[bulk_count++];
    b.p = p;
    b.size = size;
    b.seed = new_seed();
    fill(p, size, b.seed);
  }
}

void op_bulk_free(Reader& r) {
  uint8_t mode = r.u8();
  if (!bulk_count) return;
  size_t stride = (mode & 0x20) ? 1 : 1 + (mode & 3);
  size_t first = (mode >> 2) & 3;
  if (first >= stride) first = 0;
  bool reverse = mode & 0x10;
  for (size_t k = 0; k < bulk_count; k++) {
    size_t i = reverse ? bulk_count - 1 - k : k;
    if (i % stride != first) continue;
    BulkBlock& b = bulk[i];
    verify(b.p, b.size, b.seed, "bulk block changed before free");
    unsigned char* p = b.p;
    if (mode & 0x40) {
      mapalloc_free_sized(p, b.size);
    } else {
      mapalloc_free(p);
    }
    b.p = nullptr;
    CHECK(mapalloc_owns(p) == 0, "owns() is 1 for a freed bulk block", p, b.size, 0);
  }
  size_t kept = 0;
  for (size_t i = 0; i < bulk_count; i++)
    if (bulk[i].p) bulk[kept++] = bulk[i];
  bulk_count = kept;
}

void op_collect() {
  mapalloc_collect();
  // Purging must never touch a live block.
  verify_all("block changed by collect");
}

void op_threshold(Reader& r) {
  uint8_t v = r.u8();
  size_t before = mapalloc_mmap_threshold();
  if (v >= 240) {
    // Out of range: refused, nothing changes.
    size_t bad = v & 1 ? 64 * 1024 - 1 : 1024 * 1024 + 1;
    CHECK(mapalloc_set_mmap_threshold(bad) == 0, "out-of-range threshold accepted", nullptr, bad, 0);
    CHECK(mapalloc_mmap_threshold() == before, "refused threshold changed it", nullptr, before, bad);
    return;
  }
  size_t t = 64 * 1024 * (1 + v % 16);
  CHECK(mapalloc_set_mmap_threshold(t) == 1, "valid threshold refused", nullptr, t, 0);
  // 1 MiB is taken as the largest class (a chunk less its guard page), less
  // 2 bytes in secure builds (a block keeps them for its canary's record).
  size_t now = mapalloc_mmap_threshold();
  size_t cap = 1024 * 1024 - 4096;
  CHECK(now == t || (t == 1024 * 1024 && (now == cap || now == cap - 2)), "threshold not set", nullptr, now, t);
}

struct mapalloc_stats stats;

void check_stats(const char* what) {
  mapalloc_stats_get(&stats);
  // Zero-size blocks may or may not be counted (malloc(0) has its own
  // region, memalign(64, 0) a small block): between the two counts.
  size_t live = stats.small_live_blocks + stats.large_live_count, sized, all = live_count(&sized);
  if (live < sized || live > all) fail(what, nullptr, live, all);
  uint64_t per_class = 0;
  for (uint32_t c = 0; c < stats.class_count && c < MAPALLOC_MAX_CLASSES; c++) per_class += stats.classes[c].live_blocks;
  CHECK(per_class == stats.small_live_blocks, "per-class live blocks do not add up", nullptr, per_class,
        stats.small_live_blocks);
}

// Calls that must fail, and how.
void op_errors(Reader& r) {
  uint8_t kind = r.u8();
  Slot& s = slots[r.u8() % kSlots];
  const size_t huge = SIZE_MAX - 4096;
  const size_t over = size_t(PTRDIFF_MAX) + 1;
  void* p = nullptr;
  errno = 0;
  switch (kind % 14) {
    case 0: p = mapalloc_malloc(SIZE_MAX); break;
    case 1: p = mapalloc_malloc(over); break;
    case 2: p = mapalloc_calloc(SIZE_MAX / 2 + 2, 2); break;  // count * size overflows
    case 3: p = mapalloc_calloc(over, 1); break;
    case 4: p = mapalloc_malloc(size_t(1) << 47); break;  // more than the address space
    case 5: p = mapalloc_memalign(size_t(1) << 20, huge); break;
    case 6: p = mapalloc_aligned_alloc(size_t(1) << 62, 16); break;
    case 7: p = mapalloc_pvalloc(SIZE_MAX); break;
    case 8: {
      // Not a power of two: EINVAL.
      static const size_t bad[] = {0, 3, 24, 48, 80, 96, 4097, 3 << 20};
      p = mapalloc_aligned_alloc(bad[kind >> 4 & 7], 64);
      CHECK(p == nullptr && errno == EINVAL, "aligned_alloc with a bad alignment", p, size_t(errno), 0);
      return;
    }
    case 9: {
      // Below sizeof(void*) or not a power of two: EINVAL, *out and errno untouched.
      static const size_t bad[] = {0, 1, 2, 4, 24, 48, 100, 3 << 10};
      void* out = &stack_marker;
      errno = 1234;
      int rc = mapalloc_posix_memalign(&out, bad[kind >> 4 & 7], 64);
      CHECK(rc == EINVAL && out == &stack_marker && errno == 1234, "posix_memalign with a bad alignment", out,
            size_t(rc), size_t(errno));
      return;
    }
    case 10: {
      // Out of memory: ENOMEM, *out and errno untouched.
      void* out = &stack_marker;
      errno = 1234;
      int rc = mapalloc_posix_memalign(&out, 64, huge);
      CHECK(rc == ENOMEM && out == &stack_marker && errno == 1234, "posix_memalign out of memory", out,
            size_t(rc), size_t(errno));
      return;
    }
    case 11: {
      p = mapalloc_memalign(SIZE_MAX / 2 + 2, 16);
      CHECK(p == nullptr && errno == EINVAL, "memalign with a huge alignment", p, size_t(errno), 0);
      return;
    }
    default: {
      // A realloc or reallocarray that fails leaves the block as it was.
      if (!s.p) return;
      verify_slot(s, "block changed before a failing realloc");
      void* q = (kind % 14) == 12 ? mapalloc_realloc(s.p, (kind & 0x80) ? SIZE_MAX : over)
                                  : mapalloc_reallocarray(s.p, SIZE_MAX / 2, 3);
      CHECK(q == nullptr && errno == ENOMEM, "realloc to an impossible size", q, size_t(errno), s.size);
      CHECK(mapalloc_owns(s.p) == 1, "failed realloc freed the block", s.p, s.size, 0);
      CHECK(mapalloc_usable_size(s.p) == s.usable, "failed realloc changed usable_size", s.p, s.usable, 0);
      verify_slot(s, "failed realloc changed the block");
      return;
    }
  }
  CHECK(p == nullptr, "impossible allocation succeeded", p, kind % 14, 0);
  CHECK(errno == ENOMEM, "failed allocation without ENOMEM", p, kind % 14, size_t(errno));
}

enum Op : uint8_t {
  kMalloc, kCallocOp, kReallocOp, kReallocZero, kMemalign, kAlignedAlloc, kPosixMemalign, kFree,
  kFreeSized, kQuery, kScribble, kVerify, kReallocArray, kPageAligned, kBulkAlloc, kBulkFree,
  kCollect, kThreshold, kStats, kErrors,
};

constexpr Op kOps[32] = {
    kMalloc,   kMalloc,   kMalloc,      kMalloc,   kMalloc,     kMalloc,       kCallocOp,     kCallocOp,
    kReallocOp, kReallocOp, kReallocOp, kReallocOp, kReallocZero, kMemalign,   kAlignedAlloc, kPosixMemalign,
    kFree,     kFree,     kFree,        kFreeSized, kQuery,     kQuery,        kScribble,     kVerify,
    kReallocArray, kPageAligned, kBulkAlloc, kBulkFree, kCollect, kThreshold,  kStats,        kErrors,
};

void run(Reader& r) {
  while (!r.done()) {
    switch (kOps[r.u8() % 32]) {
      case kMalloc: op_malloc(r); break;
      case kCallocOp: op_calloc(r); break;
      case kReallocOp: op_realloc(r); break;
      case kReallocZero: op_realloc_zero(r); break;
      case kMemalign: op_aligned(r, 0); break;
      case kAlignedAlloc: op_aligned(r, 1); break;
      case kPosixMemalign: op_aligned(r, 2); break;
      case kFree: op_free(r); break;
      case kFreeSized: op_free_sized(r); break;
      case kQuery: op_query(r); break;
      case kScribble: op_scribble(r); break;
      case kVerify: op_verify(r); break;
      case kReallocArray: op_reallocarray(r); break;
      case kPageAligned: op_page_aligned(r); break;
      case kBulkAlloc: op_bulk_alloc(r); break;
      case kBulkFree: op_bulk_free(r); break;
      case kCollect: op_collect(); break;
      case kThreshold: op_threshold(r); break;
      case kStats: check_stats("statistics disagree with the live blocks"); break;
      case kErrors: op_errors(r); break;
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* lax = getenv("MAPALLOC_FUZZ_LAX_OWNS");
  lax_owns = lax && *lax == '1';
  default_threshold = mapalloc_mmap_threshold();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  seed_counter = 0;
  verify_all_left = kVerifyAllBudget;
  Reader r{data, size};
  run(r);
  // Verify and free everything: the next input starts from an empty model.
  for (Slot& s : slots) free_slot(s, 0);
  for (size_t i = 0; i < bulk_count; i++) {
    verify(bulk[i].p, bulk[i].size, bulk[i].seed, "bulk block changed (end of input)");
    mapalloc_free(bulk[i].p);
  }
  bulk_count = 0;
  check_stats("live blocks left after freeing everything");
  if (mapalloc_mmap_threshold() != default_threshold) mapalloc_set_mmap_threshold(default_threshold);
  return 0;
}
