#include "base/log.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

namespace mapalloc {

void LineBuffer::put(char c) {
  if (len_ == sizeof(buf_)) flush(fd_for_overflow_);
  buf_[len_++] = c;
}

LineBuffer& LineBuffer::str(const char* s) {
  while (*s) put(*s++);
  return *this;
}

LineBuffer& LineBuffer::dec(uint64_t v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = char('0' + v % 10);
    v /= 10;
  } while (v);
  while (n) put(digits[--n]);
  return *this;
}

LineBuffer& LineBuffer::hex(uint64_t v) {
  str("0x");
  bool started = false;
  for (int shift = 60; shift >= 0; shift -= 4) {
    unsigned nib = unsigned(v >> shift) & 15;
    if (nib || started || shift == 0) {
      put("0123456789abcdef"[nib]);
      started = true;
    }
  }
  return *this;
}

LineBuffer& LineBuffer::bytes(uint64_t v) {
  static const char* const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  unsigned u = 0;
  uint64_t tenths = v * 10;
  while (tenths >= 10240 && u < 4) {
    tenths /= 1024;
    u++;
  }
  dec(tenths / 10);
  if (u) put('.'), dec(tenths % 10);
  put(' ');
  return str(units[u]);
}

LineBuffer& LineBuffer::pad_to(size_t column) {
  while (len_ < column && len_ < sizeof(buf_)) put(' ');
  return *this;
}

void LineBuffer::flush(int fd) {
  size_t off = 0;
  while (off < len_) {
    ssize_t n = ::write(fd, buf_ + off, len_ - off);
    if (n <= 0) break;
    off += size_t(n);
  }
  len_ = 0;
}

void fatal(const char* what, const void* address) {
  LineBuffer line;
  line.str("mapalloc: ").str(what).str(" ").ptr(address).str("\n");
  line.flush(2);
  ::abort();
}

void fatal(const char* what) {
  LineBuffer line;
  line.str("mapalloc: ").str(what).str("\n");
  line.flush(2);
  ::abort();
}

void warn(const char* a, const char* b, const char* c) {
  LineBuffer line;
  line.str("mapalloc: warning: ").str(a);
  if (b) line.str(b);
  if (c) line.str(c);
  line.str("\n").flush(2);
}

}  // namespace mapalloc
