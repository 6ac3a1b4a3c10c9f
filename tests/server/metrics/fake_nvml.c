/* A stand-in for libnvidia-ml.so.1 with the functions sbserve's NVML collector resolves, for
 * testing it without a GPU. One device (index 3, bus id 0000:3B:00.0) whose readings advance on
 * every call, so a test can see each scrape read the library again. */
#include <string.h>

struct fake_memory { unsigned long long total, free, used; };
struct fake_utilization { unsigned int gpu, memory; };

static int fake_device_token;
static unsigned int calls;

int nvmlInit_v2(void) { return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** device) {
  if (index != 3) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
  *device = &fake_device_token;
  return 0;
}
int nvmlDeviceGetHandleByPciBusId_v2(const char* bus_id, void** device) {
  if (strcmp(bus_id, "0000:3B:00.0") != 0) return 6; /* NVML_ERROR_NOT_FOUND */
  *device = &fake_device_token;
  return 0;
}
int nvmlDeviceGetIndex(void* device, unsigned int* index) {
  if (device != &fake_device_token) return 2;
  *index = 3;
  return 0;
}
int nvmlDeviceGetMemoryInfo(void* device, struct fake_memory* m) {
  if (device != &fake_device_token) return 2;
  ++calls;
  m->total = 150ull << 30;
  m->used = (1ull << 30) * calls;
  m->free = m->total - m->used;
  return 0;
}
int nvmlDeviceGetUtilizationRates(void* device, struct fake_utilization* u) {
  if (device != &fake_device_token) return 2;
  u->gpu = 87;
  u->memory = 40;
  return 0;
}
int nvmlDeviceGetClockInfo(void* device, int type, unsigned int* mhz) {
  if (device != &fake_device_token) return 2;
  *mhz = type == 1 ? 1980 : 0; /* NVML_CLOCK_SM */
  return 0;
}
