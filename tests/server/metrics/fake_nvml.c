/* A stand-in for libnvidia-ml.so.1 with the functions sbserve's NVML collector resolves, for
 * testing it without a GPU. Two devices: index 3 (bus id 0000:3B:00.0, utilization 87%) and
 * index 4 (bus id 0000:3C:00.0, utilization 50%); each one's memory reading advances on every
 * call, so a test can see each scrape read the library again. */
#include <string.h>

struct fake_memory { unsigned long long total, free, used; };
struct fake_utilization { unsigned int gpu, memory; };

static int fake_devices[2];
static unsigned int calls[2];

/* 0 or 1 for a handle of ours, -1 otherwise. */
static int which(void* device) {
  if (device == &fake_devices[0]) return 0;
  if (device == &fake_devices[1]) return 1;
  return -1;
}

int nvmlInit_v2(void) { return 0; }
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** device) {
  if (index != 3 && index != 4) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
  *device = &fake_devices[index - 3];
  return 0;
}
int nvmlDeviceGetHandleByPciBusId_v2(const char* bus_id, void** device) {
  if (strcmp(bus_id, "0000:3B:00.0") == 0) {
    *device = &fake_devices[0];
  } else if (strcmp(bus_id, "0000:3C:00.0") == 0) {
    *device = &fake_devices[1];
  } else {
    return 6; /* NVML_ERROR_NOT_FOUND */
  }
  return 0;
}
int nvmlDeviceGetIndex(void* device, unsigned int* index) {
  if (which(device) < 0) return 2;
  *index = 3 + (unsigned int)which(device);
  return 0;
}
int nvmlDeviceGetMemoryInfo(void* device, struct fake_memory* m) {
  const int d = which(device);
  if (d < 0) return 2;
  ++calls[d];
  m->total = 150ull << 30;
  m->used = (1ull << 30) * calls[d];
  m->free = m->total - m->used;
  return 0;
}
int nvmlDeviceGetUtilizationRates(void* device, struct fake_utilization* u) {
  const int d = which(device);
  if (d < 0) return 2;
  u->gpu = d == 0 ? 87 : 50;
  u->memory = 40;
  return 0;
}
int nvmlDeviceGetClockInfo(void* device, int type, unsigned int* mhz) {
  if (which(device) < 0) return 2;
  *mhz = type == 1 ? 1980 : 0; /* NVML_CLOCK_SM */
  return 0;
}
