#include "options.h"

#include <fcntl.h>
#include <unistd.h>

#include "base/bits.h"
#include "base/log.h"
#include "os/os.h"
#include "size_classes.h"

extern char** environ;

namespace mapalloc {

Options options;

bool set_mmap_threshold(size_t bytes) {
  if (bytes < kMinThreshold || bytes > kMaxThreshold) return false;
  options.mmap_threshold.store(capped_threshold(bytes), std::memory_order_relaxed);
  return true;
}

// Parses a decimal number with an optional k/m/g suffix (powers of 1024).
static bool parse_size(const char* s, size_t len, uint64_t* out) {
  if (len == 0) return false;
  uint64_t v = 0;
  size_t i = 0;
  for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
    if (v > (UINT64_MAX - 9) / 10) return false;
    v = v * 10 + uint64_t(s[i] - '0');
  }
  if (i == 0) return false;
  if (i < len) {
    unsigned shift = 0;
    switch (s[i] | 0x20) {
      case 'k': shift = 10; break;
      case 'm': shift = 20; break;
      case 'g': shift = 30; break;
      default: return false;
    }
    if (i + 1 != len && !(i + 2 == len && (s[i + 1] | 0x20) == 'b')) return false;
    if (v > (UINT64_MAX >> shift)) return false;
    v <<= shift;
  }
  *out = v;
  return true;
}

static bool key_is(const char* key, size_t len, const char* name) {
  size_t i = 0;
  for (; i < len && name[i]; i++)
    if (key[i] != name[i]) return false;
  return i == len && name[i] == 0;
}

static void warn_option(const char* what, const char* s, size_t len) {
  char copy[96];
  size_t n = len < sizeof(copy) - 1 ? len : sizeof(copy) - 1;
  for (size_t i = 0; i < n; i++) copy[i] = s[i];
  copy[n] = 0;
  warn(what, copy, " (keeping the default)");
}

static void apply(const char* key, size_t key_len, const char* val, size_t val_len) {
  uint64_t v = 0;
  bool ok = parse_size(val, val_len, &v);
  bool is_bool = ok && v <= 1;
  if (key_is(key, key_len, "mmap_threshold")) {
    ok = ok && set_mmap_threshold(v);
  } else if (key_is(key, key_len, "purge_delay_ms")) {
    // Capped (35 years: never) so that the purge's 10 * delay + 100 cannot wrap.
    if (ok) options.purge_delay_ms = v < kMaxPurgeDelayMs ? v : kMaxPurgeDelayMs;
  } else if (key_is(key, key_len, "large_cache")) {
    if (ok) options.large_cache = v;
  } else if (key_is(key, key_len, "guard")) {
    if ((ok = is_bool)) options.guard = v;
  } else if (key_is(key, key_len, "stats")) {
    if ((ok = is_bool)) options.stats = v;
  } else if (key_is(key, key_len, "verbose")) {
    if ((ok = is_bool)) options.verbose = v;
  } else if (key_is(key, key_len, "madv_free")) {
    if ((ok = is_bool)) options.madv_free = v;
  } else if (key_is(key, key_len, "random")) {
    if ((ok = is_bool)) options.random = v;
  } else if (key_is(key, key_len, "sample")) {
    if (ok) options.sample = v < (size_t(1) << 40) ? v : size_t(1) << 40;
  } else if (key_is(key, key_len, "quarantine")) {
    if ((ok = ok && v <= kMaxQuarantine)) options.quarantine = v;
  } else {
    warn_option("unknown option in MAPALLOC_OPTIONS: ", key, key_len);
    return;
  }
  if (!ok) {
    // Quote "key=value" as given.
    warn_option("bad value in MAPALLOC_OPTIONS: ", key, size_t(val + val_len - key));
  }
}

void parse_options(const char* text) {
  const char* s = text;
  while (*s) {
    const char* item = s;
    while (*s && *s != ',') s++;
    const char* end = s;
    if (*s == ',') s++;
    if (end == item) continue;
    const char* eq = item;
    while (eq < end && *eq != '=') eq++;
    if (eq == end) {
      warn_option("option without a value in MAPALLOC_OPTIONS: ", item, size_t(end - item));
      continue;
    }
    apply(item, size_t(eq - item), eq + 1, size_t(end - eq - 1));
  }
  os::use_madv_free = options.madv_free;
}

static const char* const kVar = "MAPALLOC_OPTIONS=";
static bool has_prefix(const char* s) {
  for (const char* k = kVar; *k; k++, s++)
    if (*s != *k) return false;
  return true;
}

void load_options_from_environment() {
  if (environ) {
    for (char** e = environ; *e; e++) {
      if (has_prefix(*e)) parse_options(*e + 17);
    }
    return;
  }
  // Very early (before libc set environ): read the initial environment.
  static char buf[16384];
  int fd = ::open("/proc/self/environ", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  ssize_t n = ::read(fd, buf, sizeof(buf) - 1);
  ::close(fd);
  if (n <= 0) return;
  buf[n] = 0;
  for (char* e = buf; e < buf + n; e += __builtin_strlen(e) + 1) {
    if (has_prefix(e)) parse_options(e + 17);
  }
}

void print_options() {
  LineBuffer line;
  line.str("mapalloc: options: mmap_threshold=").dec(options.mmap_threshold.load(std::memory_order_relaxed));
  line.str(",purge_delay_ms=").dec(options.purge_delay_ms).str(",large_cache=").dec(options.large_cache);
  line.str(",guard=").dec(options.guard).str(",stats=").dec(options.stats).str(",verbose=").dec(options.verbose);
  line.str(",madv_free=").dec(options.madv_free).str(",random=").dec(options.random);
  line.str(",quarantine=").dec(options.quarantine).str(",sample=").dec(options.sample).str(MAPALLOC_SECURE ? " (secure build)\n" : " (unprotected build)\n");
  line.flush(2);
}

}  // namespace mapalloc
