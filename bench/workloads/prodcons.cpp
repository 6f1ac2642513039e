// Producer/consumer: blocks are allocated and filled on producer threads and
// verified and freed on consumer threads, handed over in batches through a
// bounded queue, so nearly every free is a cross-thread free.
//   prodcons blocks=<per producer> pairs=<producer/consumer pairs> batch=<n>
#include "common.h"
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace {

struct Item { void* p; size_t n; uint64_t tag; };
using Batch = std::vector<Item>;

class Queue {
public:
    void push(Batch b) {
        std::unique_lock l(m_);
        not_full_.wait(l, [&] { return q_.size() < 8; });
        q_.push_back(std::move(b));
        not_empty_.notify_one();
    }
    bool pop(Batch& b) {  // false once closed and drained
        std::unique_lock l(m_);
        not_empty_.wait(l, [&] { return !q_.empty() || closed_; });
        if (q_.empty()) return false;
        b = std::move(q_.front());
        q_.pop_front();
        not_full_.notify_one();
        return true;
    }
    void close() { std::lock_guard l(m_); closed_ = true; not_empty_.notify_all(); }
private:
    std::mutex m_;
    std::condition_variable not_full_, not_empty_;
    std::deque<Batch> q_;
    bool closed_ = false;
};

}  // namespace

int main(int argc, char** argv) {
    wl::Args a{argc, argv};
    long blocks = a.get("blocks", 2000000), pairs = a.get("pairs", 2), batch = a.get("batch", 256);
    Queue q;
    std::vector<uint64_t> sums(pairs);
    std::vector<std::thread> producers, consumers;
    for (long t = 0; t < pairs; ++t) {
        producers.emplace_back([&, t] {
            wl::Rng r(2000 + t);
            Batch b;
            for (long i = 0; i < blocks; ++i) {
                uint64_t n = r.below(10) ? r.range(8, 512) : r.range(513, 8192);
                Item it{std::malloc(n), n, (uint64_t(t) << 40) + i};
                if (!it.p) std::abort();
                wl::fill(it.p, n, it.tag);
                b.push_back(it);
                if (long(b.size()) == batch || i + 1 == blocks) { q.push(std::move(b)); b = Batch(); }
            }
        });
        consumers.emplace_back([&, t] {
            Batch b;
            uint64_t h = 0;
            while (q.pop(b))
                for (Item& it : b) { h += wl::digest(it.p, it.n) ^ wl::mix(it.tag); std::free(it.p); }
            sums[t] = h;
        });
    }
    for (auto& th : producers) th.join();
    q.close();
    uint64_t h = 0;
    for (long t = 0; t < pairs; ++t) { consumers[t].join(); h += sums[t]; }
    wl::print_checksum(h);
}
