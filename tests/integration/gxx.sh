#!/bin/bash
# Integration workload: g++ -O2 (cc1plus, as, collect2/ld all under the
# shim when the run is) compiling a generated template/STL-heavy C++ file, then
# running the program it produced. Its output and the object file's hash are
# compared with the plain run (GCC's output does not depend on addresses).
set -euo pipefail
shared=${MAPALLOC_IT_SHARED:?}
N=${MAPALLOC_IT_GXX_UNITS:-12}

case ${1:-} in
setup)
  command -v g++ >/dev/null || { echo "missing: g++" >&2; exit 77; }
  src=$shared/gen.cpp
  {
    cat <<'HDR'
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <memory>
#include <numeric>
#include <set>
#include <string>
#include <tuple>
#include <unordered_map>
#include <variant>
#include <vector>

template <int N> struct Fib { static constexpr uint64_t value = Fib<N - 1>::value + Fib<N - 2>::value; };
template <> struct Fib<1> { static constexpr uint64_t value = 1; };
template <> struct Fib<0> { static constexpr uint64_t value = 0; };

template <typename K, typename V>
struct Table {
  std::map<K, std::vector<V>> by_key;
  std::unordered_map<std::string, V> by_name;
  void add(const K& k, const V& v, const std::string& name) { by_key[k].push_back(v); by_name[name] = v; }
  template <typename F> auto fold(F f) const {
    std::decay_t<decltype(f(V{}, V{}))> acc{};
    for (auto& [k, vs] : by_key) for (auto& v : vs) acc = f(acc, v);
    return acc;
  }
};

struct Shape { virtual ~Shape() = default; virtual double area() const = 0; virtual std::string name() const = 0; };
HDR
    for ((u = 0; u < N; u++)); do
      cat <<UNIT
namespace u$u {
struct Rect : Shape {
  double w, h;
  Rect(double a, double b) : w(a), h(b) {}
  double area() const override { return w * h + $u; }
  std::string name() const override { return "rect$u"; }
};
template <typename T, int M>
T work(const std::vector<T>& in) {
  std::vector<T> v(in);
  std::sort(v.begin(), v.end(), [](const T& a, const T& b) { return (a % $((u + 7))) < (b % $((u + 7))) || ((a % $((u + 7))) == (b % $((u + 7))) && a < b); });
  std::set<T> s(v.begin(), v.end());
  Table<T, T> t;
  for (std::size_t i = 0; i < v.size(); ++i) t.add(v[i] % M, v[i], std::to_string(v[i] * $((u + 1))));
  T acc = t.fold([](T a, T b) { return a * 31 + b; });
  std::variant<T, std::string, double> var = acc;
  if (s.size() % 2) var = std::to_string(acc);
  return std::visit([](auto&& x) -> T {
    using X = std::decay_t<decltype(x)>;
    if constexpr (std::is_same_v<X, std::string>) return static_cast<T>(x.size());
    else return static_cast<T>(x);
  }, var) + static_cast<T>(Fib<$((u % 60 + 10))>::value % 1000);
}
uint64_t run() {
  std::vector<uint64_t> a(200 + $u);
  std::iota(a.begin(), a.end(), $u);
  std::vector<int64_t> b(a.begin(), a.end());
  std::vector<std::unique_ptr<Shape>> shapes;
  for (int i = 0; i < 10; ++i) shapes.push_back(std::make_unique<Rect>(i, i + $u));
  double area = 0;
  for (auto& s : shapes) area += s->area() + s->name().size();
  std::function<uint64_t(uint64_t)> f = [&](uint64_t x) { return x ^ work<uint64_t, $((u % 13 + 3))>(a); };
  return f($u) + static_cast<uint64_t>(work<int64_t, $((u % 11 + 2))>(b)) + static_cast<uint64_t>(area);
}
}  // namespace u$u
UNIT
    done
    # shellcheck disable=SC2028  # the backslashes are meant for the C++ source
    echo 'int main() {'
    echo '  uint64_t total = 0;'
    for ((u = 0; u < N; u++)); do
      # shellcheck disable=SC2028
      echo "  { uint64_t r = u$u::run(); total = total * 1000003 + r; std::printf(\"unit $u %llu\\n\", (unsigned long long)r); }"
    done
    # shellcheck disable=SC2028
    echo '  std::printf("total %llu\n", (unsigned long long)total);'
    echo '}'
  } >"$src"
  ;;
run)
  g++ -std=c++20 -O2 -frandom-seed=mapalloc -c "$shared/gen.cpp" -o gen.o
  g++ -O2 gen.o -o gen
  ./gen
  echo "object sha256 $(sha256sum <gen.o | cut -d' ' -f1)"
  ;;
esac
