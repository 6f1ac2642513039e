// Layer 1: signal-safe logging with write(2): nothing here allocates.
#pragma once
#include <cstddef>
#include <cstdint>

namespace mapalloc {

// A fixed buffer that formats text, numbers and pointers without malloc.
class LineBuffer {
 public:
  LineBuffer& str(const char* s);
  LineBuffer& dec(uint64_t v);
  LineBuffer& hex(uint64_t v);  // 0x-prefixed
  LineBuffer& ptr(const void* p) { return hex(reinterpret_cast<uintptr_t>(p)); }
  LineBuffer& bytes(uint64_t v);  // human units: 12.3 MiB
  LineBuffer& pad_to(size_t column);
  void flush(int fd);  // writes and empties the buffer
  size_t size() const { return len_; }

 private:
  void put(char c);
  char buf_[512];
  size_t len_ = 0;
  int fd_for_overflow_ = 2;
};

// Writes "mapalloc: <what> <address>" on one line and aborts.
[[noreturn]] void fatal(const char* what, const void* address);
[[noreturn]] void fatal(const char* what);
void warn(const char* a, const char* b = nullptr, const char* c = nullptr);

}  // namespace mapalloc
