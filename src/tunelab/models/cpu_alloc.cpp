// tunelab's CPU tensor allocator: plain malloc, aligned by hand (models/cpu_alloc.py says why).
//
// torch's default CPU allocator asks glibc for 64-byte-aligned blocks with posix_memalign. glibc before
// 2.38 cannot hand a freed block back to an aligned request of the same size, so the temporaries a
// training forward frees are holes the heap never reuses (a quarter of a SmolLM2 LoRA run's peak).
// malloc(n + 64) of a size freed before is served from that freed block, so nothing is left behind.
// The block's start is kept just below the aligned pointer, so data == context (a "simple" pointer, as
// torch's raw_allocate and storage code expect) and one static deleter frees it.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <new>

namespace {

constexpr std::size_t kAlign = 64;  // what torch's own CPU allocator guarantees (c10::gAlignment)

// bytes of tensors alive now and at most since the last reset: the CPU's max_memory_allocated
std::atomic<std::size_t> live{0}, high{0};

void free_aligned(void* p) {
  if (!p) return;
  live.fetch_sub(static_cast<std::size_t*>(p)[-2], std::memory_order_relaxed);
  std::free(static_cast<void**>(p)[-1]);
}

struct MallocAligned final : c10::Allocator {
  c10::DataPtr allocate(std::size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &free_aligned, cpu};
    // malloc returns 16-byte-aligned blocks: the aligned start is 16 to 64 bytes in, room for the
    // block's start and the size just below it
    void* raw = std::malloc(n + kAlign);
    if (!raw) throw std::bad_alloc();
    auto at = (reinterpret_cast<std::uintptr_t>(raw) + 2 * sizeof(void*) + kAlign - 1) & ~(kAlign - 1);
    void* p = reinterpret_cast<void*>(at);
    static_cast<void**>(p)[-1] = raw;
    static_cast<std::size_t*>(p)[-2] = n;
    std::size_t now = live.fetch_add(n, std::memory_order_relaxed) + n;
    std::size_t top = high.load(std::memory_order_relaxed);
    while (now > top && !high.compare_exchange_weak(top, now, std::memory_order_relaxed)) {
    }
    return {p, p, &free_aligned, cpu};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &free_aligned; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

MallocAligned allocator;
c10::Allocator* previous = nullptr;

}  // namespace

// Tensors made before a switch keep their own deleter, so switching back and forth is safe.
extern "C" int tunelab_alloc_install() {
  if (c10::GetCPUAllocator() == &allocator) return 0;
  previous = c10::GetCPUAllocator();
  c10::SetCPUAllocator(&allocator, /*priority=*/1);  // above the default's registration (0)
  return 1;
}

extern "C" int tunelab_alloc_uninstall() {
  if (!previous || c10::GetCPUAllocator() != &allocator) return 0;
  c10::SetCPUAllocator(previous, /*priority=*/1);
  previous = nullptr;
  return 1;
}

extern "C" std::size_t tunelab_alloc_live() { return live.load(); }
extern "C" std::size_t tunelab_alloc_peak() { return high.load(); }
extern "C" void tunelab_alloc_reset_peak() { high.store(live.load()); }

extern "C" int tunelab_alloc_active() { return c10::GetCPUAllocator() == &allocator ? 1 : 0; }
