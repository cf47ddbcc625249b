/*
 * libnvidia-ml.so.1 of the simulated NVIDIA driver installation.
 *
 * The plugin loads this library exactly as it loads NVIDIA's: go-nvml
 * dlopen()s libnvidia-ml.so.1 from the driver root and calls the NVML C API
 * by its versioned symbol names, with the structures of NVIDIA's nvml.h
 * (this file is compiled against the nvml.h that go-nvml ships, so the two
 * cannot disagree on a layout). What NVIDIA's library asks of the kernel
 * driver through /dev/nvidiactl, this one asks of the simulated node's
 * "kernel", the gpu-sim serve process, over a Unix socket that it finds in
 * the driver root it was loaded from: <root>/run/gpu-sim/nvml.sock, where
 * <root> is the nearest ancestor of the library's directory that has one.
 * Without it nvmlInit returns NVML_ERROR_DRIVER_NOT_LOADED, as NVIDIA's
 * library does on a node whose kernel module is not loaded.
 *
 * The wire protocol (pkg/simhost/nvmlserver) is one request line, an
 * operation and its integer or token arguments separated by spaces, and one
 * answer line, the NVML return code and the results. Strings in answers are
 * percent-encoded. Every call is answered by the simulator, so NVML's error
 * semantics (NOT_SUPPORTED on a GPU without MIG, GPU_IS_LOST, IN_USE, a MIG
 * mode pending a reset) are the simulated hardware's, not this file's.
 *
 * Handles (nvmlDevice_t and the others) are pointers to small records that
 * are interned: the same GPU, MIG device, GPU or compute instance always has
 * the same handle, as with NVIDIA's library, where callers compare handles
 * (an event names its device by handle). Records are never freed; their
 * number is bounded by the ID ranges checked in intern().
 *
 * Like NVIDIA's library, this one needs libpthread.so.0 and libdl.so.2 (it
 * is linked with --no-as-needed against both), so an image that lacks them
 * fails to load it just as it would fail to load the real one.
 */
#define _GNU_SOURCE
#define NVML_NO_UNVERSIONED_FUNC_DEFS
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "nvml.h"

#define EXPORT __attribute__((visibility("default")))

/* The socket's place in the driver root, and how far above the library's
 * directory the root may be (usr/lib/x86_64-linux-gnu is three levels). */
#define SOCKET_IN_ROOT "/run/gpu-sim/nvml.sock"
#define MAX_ROOT_DEPTH 5
/* The protocol version gpu-sim serve must speak. */
#define PROTOCOL_VERSION 1
/* Bounds of one answer line and of an ID in a handle. */
#define MAX_LINE 65536
#define MAX_GPUS 1024
#define MAX_INSTANCE_ID 64

/* ---- handles ---- */

struct nvmlDevice_st {
	int gpu, gi, ci; /* gi < 0: the whole GPU */
	struct nvmlDevice_st *next;
};
struct nvmlGpuInstance_st {
	int gpu, gi;
	struct nvmlGpuInstance_st *next;
};
struct nvmlComputeInstance_st {
	int gpu, gi, ci;
	struct nvmlComputeInstance_st *next;
};
struct nvmlEventSet_st {
	int fd; /* the set lives in the server for as long as this connection */
	pthread_mutex_t mu;
};

static pthread_mutex_t handles_mu = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlDevice_st *devices;
static struct nvmlGpuInstance_st *gpu_instances;
static struct nvmlComputeInstance_st *compute_instances;

static int ids_ok(int gpu, int gi, int ci)
{
	return gpu >= 0 && gpu < MAX_GPUS && gi >= -1 && gi < MAX_INSTANCE_ID && ci >= -1 && ci < MAX_INSTANCE_ID;
}

static struct nvmlDevice_st *device_handle(int gpu, int gi, int ci)
{
	struct nvmlDevice_st *d;
	if (!ids_ok(gpu, gi, ci))
		return NULL;
	if (gi < 0)
		ci = -1;
	pthread_mutex_lock(&handles_mu);
	for (d = devices; d; d = d->next)
		if (d->gpu == gpu && d->gi == gi && d->ci == ci)
			break;
	if (!d && (d = calloc(1, sizeof(*d)))) {
		d->gpu = gpu, d->gi = gi, d->ci = ci;
		d->next = devices;
		devices = d;
	}
	pthread_mutex_unlock(&handles_mu);
	return d;
}

static struct nvmlGpuInstance_st *gi_handle(int gpu, int gi)
{
	struct nvmlGpuInstance_st *h;
	if (!ids_ok(gpu, gi, -1) || gi < 0)
		return NULL;
	pthread_mutex_lock(&handles_mu);
	for (h = gpu_instances; h; h = h->next)
		if (h->gpu == gpu && h->gi == gi)
			break;
	if (!h && (h = calloc(1, sizeof(*h)))) {
		h->gpu = gpu, h->gi = gi;
		h->next = gpu_instances;
		gpu_instances = h;
	}
	pthread_mutex_unlock(&handles_mu);
	return h;
}

static struct nvmlComputeInstance_st *ci_handle(int gpu, int gi, int ci)
{
	struct nvmlComputeInstance_st *h;
	if (!ids_ok(gpu, gi, ci) || gi < 0 || ci < 0)
		return NULL;
	pthread_mutex_lock(&handles_mu);
	for (h = compute_instances; h; h = h->next)
		if (h->gpu == gpu && h->gi == gi && h->ci == ci)
			break;
	if (!h && (h = calloc(1, sizeof(*h)))) {
		h->gpu = gpu, h->gi = gi, h->ci = ci;
		h->next = compute_instances;
		compute_instances = h;
	}
	pthread_mutex_unlock(&handles_mu);
	return h;
}

/* ---- connection to the simulated kernel ---- */

static pthread_mutex_t conn_mu = PTHREAD_MUTEX_INITIALIZER;
static int init_count;
static char socket_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
/* Idle connections; a call takes one or opens another, so that calls of
 * several threads do not wait for each other. */
#define MAX_IDLE 8
static int idle_fds[MAX_IDLE];
static int idle_count;

/* find_socket sets socket_path from the library's own location. */
static int find_socket(void)
{
	Dl_info info;
	char dir[PATH_MAX], candidate[PATH_MAX + sizeof(SOCKET_IN_ROOT)];
	struct stat st;
	int depth;
	char *slash;

	if (!dladdr((void *)find_socket, &info) || !info.dli_fname)
		return 0;
	if (strlen(info.dli_fname) >= sizeof(dir))
		return 0;
	strcpy(dir, info.dli_fname);
	for (depth = 0; depth <= MAX_ROOT_DEPTH; depth++) {
		slash = strrchr(dir, '/');
		if (!slash)
			return 0;
		*slash = '\0';
		snprintf(candidate, sizeof(candidate), "%s%s", dir, SOCKET_IN_ROOT);
		if (stat(candidate, &st) == 0 && S_ISSOCK(st.st_mode)) {
			if (strlen(candidate) >= sizeof(socket_path))
				return 0;
			strcpy(socket_path, candidate);
			return 1;
		}
		if (dir[0] == '\0')
			return 0;
	}
	return 0;
}

static int dial(void)
{
	struct sockaddr_un addr;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	strcpy(addr.sun_path, socket_path);
	if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int write_all(int fd, const char *buf, size_t n)
{
	while (n > 0) {
		ssize_t w = send(fd, buf, n, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return 0;
		buf += w, n -= (size_t)w;
	}
	return 1;
}

/* read_line reads one answer line (without its newline) into out. */
static int read_line(int fd, char *out, size_t size)
{
	size_t n = 0;
	for (;;) {
		char c;
		ssize_t r = read(fd, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		if (c == '\n') {
			out[n] = '\0';
			return 1;
		}
		if (n + 1 >= size)
			return 0;
		out[n++] = c;
	}
}

/* exchange sends req on fd and reads the answer; 0 when the connection
 * broke. */
static int exchange(int fd, const char *req, char *answer, size_t size)
{
	return write_all(fd, req, strlen(req)) && read_line(fd, answer, size);
}

static int take_conn(void)
{
	int fd = -1;
	pthread_mutex_lock(&conn_mu);
	if (init_count == 0) {
		pthread_mutex_unlock(&conn_mu);
		return -2;
	}
	if (idle_count > 0)
		fd = idle_fds[--idle_count];
	pthread_mutex_unlock(&conn_mu);
	return fd >= 0 ? fd : dial();
}

static void give_conn(int fd)
{
	pthread_mutex_lock(&conn_mu);
	if (init_count > 0 && idle_count < MAX_IDLE) {
		idle_fds[idle_count++] = fd;
		fd = -1;
	}
	pthread_mutex_unlock(&conn_mu);
	if (fd >= 0)
		close(fd);
}

/* An answer being parsed. */
struct answer {
	char line[MAX_LINE];
	char *cur;
};

/* call sends the request formatted from fmt and parses the answer's return
 * code; the results follow in a->cur. A simulator that cannot be reached
 * is a GPU driver that stopped answering: NVML_ERROR_UNKNOWN. */
static nvmlReturn_t vcall(struct answer *a, const char *fmt, va_list ap)
{
	char req[512];
	int n = vsnprintf(req, sizeof(req) - 1, fmt, ap);
	long ret;
	char *end;
	int fd;

	if (n < 0 || n >= (int)sizeof(req) - 1)
		return NVML_ERROR_INVALID_ARGUMENT;
	req[n++] = '\n';
	req[n] = '\0';
	fd = take_conn();
	if (fd == -2)
		return NVML_ERROR_UNINITIALIZED;
	if (fd < 0)
		return NVML_ERROR_UNKNOWN;
	if (!exchange(fd, req, a->line, sizeof(a->line))) {
		close(fd);
		return NVML_ERROR_UNKNOWN;
	}
	give_conn(fd);
	ret = strtol(a->line, &end, 10);
	if (end == a->line)
		return NVML_ERROR_UNKNOWN;
	a->cur = end;
	return (nvmlReturn_t)ret;
}

static nvmlReturn_t call(struct answer *a, const char *fmt, ...)
{
	va_list ap;
	nvmlReturn_t r;
	va_start(ap, fmt);
	r = vcall(a, fmt, ap);
	va_end(ap);
	return r;
}

static unsigned long long next_u64(struct answer *a)
{
	char *end;
	unsigned long long v = strtoull(a->cur, &end, 10);
	a->cur = end;
	return v;
}

static long long next_i64(struct answer *a)
{
	char *end;
	long long v = strtoll(a->cur, &end, 10);
	a->cur = end;
	return v;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* next_str decodes the next percent-encoded string into out (length
 * bytes with its NUL): NVML_ERROR_INSUFFICIENT_SIZE when it does not fit. */
static nvmlReturn_t next_str(struct answer *a, char *out, unsigned int length)
{
	char buf[4096];
	size_t n = 0;
	while (*a->cur == ' ')
		a->cur++;
	while (*a->cur && *a->cur != ' ' && n + 1 < sizeof(buf)) {
		if (*a->cur == '%' && hexval(a->cur[1]) >= 0 && hexval(a->cur[2]) >= 0) {
			buf[n++] = (char)(hexval(a->cur[1]) * 16 + hexval(a->cur[2]));
			a->cur += 3;
		} else {
			buf[n++] = *a->cur++;
		}
	}
	buf[n] = '\0';
	if (!out)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (n + 1 > length)
		return NVML_ERROR_INSUFFICIENT_SIZE;
	memcpy(out, buf, n + 1);
	return NVML_SUCCESS;
}

/* The handle arguments of a request. */
#define DEV(d) (d).handle->gpu, (d).handle->gi, (d).handle->ci
#define CHECK_DEV(d)                                          \
	do {                                                      \
		if (!(d).handle)                                      \
			return NVML_ERROR_INVALID_ARGUMENT;               \
	} while (0)

/* ---- initialisation ---- */

static nvmlReturn_t init(void)
{
	struct answer *a;
	nvmlReturn_t r;
	char hello[64];
	int fd;

	pthread_mutex_lock(&conn_mu);
	if (init_count > 0) {
		init_count++;
		pthread_mutex_unlock(&conn_mu);
		return NVML_SUCCESS;
	}
	if (!find_socket()) {
		pthread_mutex_unlock(&conn_mu);
		return NVML_ERROR_DRIVER_NOT_LOADED;
	}
	fd = dial();
	if (fd < 0) {
		pthread_mutex_unlock(&conn_mu);
		return NVML_ERROR_DRIVER_NOT_LOADED;
	}
	a = malloc(sizeof(*a));
	if (!a) {
		close(fd);
		pthread_mutex_unlock(&conn_mu);
		return NVML_ERROR_MEMORY;
	}
	snprintf(hello, sizeof(hello), "hello %d\n", PROTOCOL_VERSION);
	r = NVML_ERROR_LIB_RM_VERSION_MISMATCH;
	if (exchange(fd, hello, a->line, sizeof(a->line)) && atoi(a->line) == NVML_SUCCESS) {
		r = NVML_SUCCESS;
		init_count = 1;
		idle_fds[idle_count++] = fd;
	} else {
		close(fd);
	}
	free(a);
	pthread_mutex_unlock(&conn_mu);
	return r;
}

EXPORT nvmlReturn_t nvmlInit_v2(void) { return init(); }
EXPORT nvmlReturn_t nvmlInit(void) { return init(); }
EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
	(void)flags;
	return init();
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
	pthread_mutex_lock(&conn_mu);
	if (init_count == 0) {
		pthread_mutex_unlock(&conn_mu);
		return NVML_ERROR_UNINITIALIZED;
	}
	if (--init_count == 0)
		while (idle_count > 0)
			close(idle_fds[--idle_count]);
	pthread_mutex_unlock(&conn_mu);
	return NVML_SUCCESS;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
	switch (result) {
	case NVML_SUCCESS: return "Success";
	case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
	case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
	case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
	case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
	case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
	case NVML_ERROR_NOT_FOUND: return "Not Found";
	case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
	case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
	case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
	case NVML_ERROR_TIMEOUT: return "Timeout";
	case NVML_ERROR_IRQ_ISSUE: return "Interrupt request issue";
	case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
	case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
	case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
	case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
	case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
	case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
	case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
	case NVML_ERROR_IN_USE: return "In use by another client";
	case NVML_ERROR_MEMORY: return "Insufficient Memory";
	case NVML_ERROR_NO_DATA: return "No data";
	case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Ran out of critical resources, other than memory";
	case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Version mismatch between argument and API";
	case NVML_ERROR_NOT_READY: return "System is not ready for the request";
	case NVML_ERROR_GPU_NOT_FOUND: return "No GPUs were found";
	case NVML_ERROR_INVALID_STATE: return "Resource not in correct state to perform requested operation";
	default: return "Unknown Error";
	}
}

/* ---- system ---- */

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
	struct answer a;
	nvmlReturn_t r = call(&a, "driver-version");
	return r == NVML_SUCCESS ? next_str(&a, version, length) : r;
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
	struct answer a;
	nvmlReturn_t r = call(&a, "nvml-version");
	return r == NVML_SUCCESS ? next_str(&a, version, length) : r;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
	struct answer a;
	nvmlReturn_t r;
	if (!cudaDriverVersion)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "cuda-version")) == NVML_SUCCESS)
		*cudaDriverVersion = (int)next_i64(&a);
	return r;
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
	return nvmlSystemGetCudaDriverVersion(cudaDriverVersion);
}

/* ---- devices ---- */

EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
	struct answer a;
	nvmlReturn_t r;
	if (!deviceCount)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "count")) == NVML_SUCCESS)
		*deviceCount = (unsigned int)next_u64(&a);
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) { return nvmlDeviceGetCount_v2(deviceCount); }

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device || index >= MAX_GPUS)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "by-index %u", index)) != NVML_SUCCESS)
		return r;
	device->handle = device_handle((int)index, -1, -1);
	return device->handle ? NVML_SUCCESS : NVML_ERROR_MEMORY;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
	return nvmlDeviceGetHandleByIndex_v2(index, device);
}

/* token_ok tells whether s can travel as one token of a request. */
static int token_ok(const char *s)
{
	size_t n = 0;
	for (; *s; s++, n++)
		if (*s <= ' ' || *s > '~' || n >= 128)
			return 0;
	return n > 0;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
	struct answer a;
	nvmlReturn_t r;
	int gpu, gi, ci;
	if (!uuid || !device)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (!token_ok(uuid))
		return NVML_ERROR_NOT_FOUND;
	if ((r = call(&a, "by-uuid %s", uuid)) != NVML_SUCCESS)
		return r;
	gpu = (int)next_i64(&a), gi = (int)next_i64(&a), ci = (int)next_i64(&a);
	device->handle = device_handle(gpu, gi, ci);
	return device->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
	struct answer a;
	nvmlReturn_t r;
	if (!pciBusId || !device)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (!token_ok(pciBusId))
		return NVML_ERROR_NOT_FOUND;
	if ((r = call(&a, "by-pci %s", pciBusId)) != NVML_SUCCESS)
		return r;
	device->handle = device_handle((int)next_i64(&a), -1, -1);
	return device->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

/* string_call answers a string property of a device. */
static nvmlReturn_t string_call(nvmlDevice_t device, const char *op, char *out, unsigned int length)
{
	struct answer a;
	nvmlReturn_t r;
	CHECK_DEV(device);
	if ((r = call(&a, "%s %d %d %d", op, DEV(device))) != NVML_SUCCESS)
		return r;
	return next_str(&a, out, length);
}

/* u64_call answers an integer property of a device: the request is op,
 * the device's IDs, then the arguments fmt formats. */
static nvmlReturn_t u64_call(nvmlDevice_t device, unsigned long long *out, const char *op, const char *fmt, ...)
{
	struct answer a;
	nvmlReturn_t r;
	char extra[128] = "";
	va_list ap;
	if (!device.handle || !out)
		return NVML_ERROR_INVALID_ARGUMENT;
	va_start(ap, fmt);
	vsnprintf(extra, sizeof(extra), fmt, ap);
	va_end(ap);
	if ((r = call(&a, "%s %d %d %d%s", op, DEV(device), extra)) == NVML_SUCCESS)
		*out = next_u64(&a);
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
	return string_call(device, "uuid", uuid, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
	return string_call(device, "name", name, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
	return string_call(device, "serial", serial, length);
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
	if (!device.handle || !index)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (device.handle->gi >= 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	*index = (unsigned int)device.handle->gpu;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minorNumber)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "minor", "");
	if (r == NVML_SUCCESS)
		*minorNumber = (unsigned int)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetBrand(nvmlDevice_t device, nvmlBrandType_t *type)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "brand", "");
	if (r == NVML_SUCCESS)
		*type = (nvmlBrandType_t)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetArchitecture(nvmlDevice_t device, nvmlDeviceArchitecture_t *arch)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "architecture", "");
	if (r == NVML_SUCCESS)
		*arch = (nvmlDeviceArchitecture_t)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major, int *minor)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !major || !minor)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "compute-capability %d %d %d", DEV(device))) == NVML_SUCCESS) {
		*major = (int)next_i64(&a);
		*minor = (int)next_i64(&a);
	}
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !memory)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "memory %d %d %d", DEV(device))) == NVML_SUCCESS) {
		memory->total = next_u64(&a);
		memory->free = next_u64(&a);
		memory->used = next_u64(&a);
	}
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !pci)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "pci %d %d %d", DEV(device))) != NVML_SUCCESS)
		return r;
	memset(pci, 0, sizeof(*pci));
	pci->domain = (unsigned int)next_u64(&a);
	pci->bus = (unsigned int)next_u64(&a);
	pci->device = (unsigned int)next_u64(&a);
	pci->pciDeviceId = (unsigned int)next_u64(&a);
	pci->pciSubSystemId = (unsigned int)next_u64(&a);
	if ((r = next_str(&a, pci->busId, sizeof(pci->busId))) != NVML_SUCCESS)
		return r;
	snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04x:%02x:%02x.0", pci->domain & 0xffff, pci->bus, pci->device);
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(device, pci); }
EXPORT nvmlReturn_t nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_t *pci) { return nvmlDeviceGetPciInfo_v3(device, pci); }

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType, unsigned int *temp)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "temperature", " %d", (int)sensorType);
	if (r == NVML_SUCCESS)
		*temp = (unsigned int)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, nvmlTemperatureThresholds_t thresholdType, unsigned int *temp)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "temperature-threshold", " %d", (int)thresholdType);
	if (r == NVML_SUCCESS)
		*temp = (unsigned int)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device, nvmlEnableState_t *isPending)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "retired-pages-pending", "");
	if (r == NVML_SUCCESS)
		*isPending = (nvmlEnableState_t)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
					      unsigned int *isPending, unsigned int *failureOccurred)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !corrRows || !uncRows || !isPending || !failureOccurred)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "remapped-rows %d %d %d", DEV(device))) == NVML_SUCCESS) {
		*corrRows = (unsigned int)next_u64(&a);
		*uncRows = (unsigned int)next_u64(&a);
		*isPending = (unsigned int)next_u64(&a);
		*failureOccurred = (unsigned int)next_u64(&a);
	}
	return r;
}

/* ---- NVLink fabric ---- */

/* A GPU's fabric registration, as the kernel side answers it. */
struct fabric {
	unsigned char clusterUuid[NVML_GPU_FABRIC_UUID_LEN];
	unsigned int status, cliqueId, healthMask;
	unsigned char state, healthSummary;
};

/* fabric_call asks for the registration of a GPU: a GPU without fabric is
 * the simulated hardware's NVML_ERROR_NOT_SUPPORTED. The cluster UUID comes
 * as 32 hex digits. */
static nvmlReturn_t fabric_call(nvmlDevice_t device, struct fabric *f)
{
	struct answer a;
	nvmlReturn_t r;
	char hex[2 * NVML_GPU_FABRIC_UUID_LEN + 1];
	int i;
	if ((r = call(&a, "fabric %d %d %d", DEV(device))) != NVML_SUCCESS)
		return r;
	memset(f, 0, sizeof(*f));
	f->state = (unsigned char)next_u64(&a);
	f->status = (unsigned int)next_u64(&a);
	f->cliqueId = (unsigned int)next_u64(&a);
	if ((r = next_str(&a, hex, sizeof(hex))) != NVML_SUCCESS || strlen(hex) != sizeof(hex) - 1)
		return NVML_ERROR_UNKNOWN;
	for (i = 0; i < NVML_GPU_FABRIC_UUID_LEN; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return NVML_ERROR_UNKNOWN;
		f->clusterUuid[i] = (unsigned char)(hi * 16 + lo);
	}
	f->healthMask = (unsigned int)next_u64(&a);
	f->healthSummary = (unsigned char)next_u64(&a);
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfo(nvmlDevice_t device, nvmlGpuFabricInfo_t *gpuFabricInfo)
{
	struct fabric f;
	nvmlReturn_t r;
	if (!device.handle || !gpuFabricInfo)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = fabric_call(device, &f)) != NVML_SUCCESS)
		return r;
	memset(gpuFabricInfo, 0, sizeof(*gpuFabricInfo));
	memcpy(gpuFabricInfo->clusterUuid, f.clusterUuid, sizeof(f.clusterUuid));
	gpuFabricInfo->status = (nvmlReturn_t)f.status;
	gpuFabricInfo->cliqueId = f.cliqueId;
	gpuFabricInfo->state = f.state;
	return NVML_SUCCESS;
}

/* nvmlDeviceGetGpuFabricInfoV fills an nvmlGpuFabricInfo_v2_t or _v3_t, by
 * the version the caller set; another version is
 * NVML_ERROR_ARGUMENT_VERSION_MISMATCH. */
EXPORT nvmlReturn_t nvmlDeviceGetGpuFabricInfoV(nvmlDevice_t device, nvmlGpuFabricInfoV_t *gpuFabricInfo)
{
	struct fabric f;
	nvmlReturn_t r;
	unsigned int version;
	if (!device.handle || !gpuFabricInfo)
		return NVML_ERROR_INVALID_ARGUMENT;
	version = gpuFabricInfo->version;
	if (version != nvmlGpuFabricInfo_v2 && version != nvmlGpuFabricInfo_v3)
		return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
	if ((r = fabric_call(device, &f)) != NVML_SUCCESS)
		return r;
	if (version == nvmlGpuFabricInfo_v2) {
		nvmlGpuFabricInfo_v2_t *v2 = (nvmlGpuFabricInfo_v2_t *)gpuFabricInfo;
		memset(v2, 0, sizeof(*v2));
		v2->version = version;
		memcpy(v2->clusterUuid, f.clusterUuid, sizeof(f.clusterUuid));
		v2->status = (nvmlReturn_t)f.status;
		v2->cliqueId = f.cliqueId;
		v2->state = f.state;
		v2->healthMask = f.healthMask;
		return NVML_SUCCESS;
	}
	memset(gpuFabricInfo, 0, sizeof(*gpuFabricInfo));
	gpuFabricInfo->version = version;
	memcpy(gpuFabricInfo->clusterUuid, f.clusterUuid, sizeof(f.clusterUuid));
	gpuFabricInfo->status = (nvmlReturn_t)f.status;
	gpuFabricInfo->cliqueId = f.cliqueId;
	gpuFabricInfo->state = f.state;
	gpuFabricInfo->healthMask = f.healthMask;
	gpuFabricInfo->healthSummary = f.healthSummary;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
						nvmlEccCounterType_t counterType, unsigned long long *eccCounts)
{
	return u64_call(device, eccCounts, "ecc-errors", " %d %d", (int)errorType, (int)counterType);
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device, unsigned long long *eventTypes)
{
	return u64_call(device, eventTypes, "supported-events", "");
}

/* ---- MIG ---- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !currentMode || !pendingMode)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "mig-mode %d %d %d", DEV(device))) == NVML_SUCCESS) {
		*currentMode = (unsigned int)next_u64(&a);
		*pendingMode = (unsigned int)next_u64(&a);
	}
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceSetMigMode(nvmlDevice_t device, unsigned int mode, nvmlReturn_t *activationStatus)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !activationStatus)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "set-mig-mode %d %d %d %u", DEV(device), mode)) == NVML_SUCCESS)
		*activationStatus = (nvmlReturn_t)next_i64(&a);
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
	if (!device.handle || !isMigDevice)
		return NVML_ERROR_INVALID_ARGUMENT;
	*isMigDevice = device.handle->gi >= 0;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device)
{
	if (!migDevice.handle || !device || migDevice.handle->gi < 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	device->handle = device_handle(migDevice.handle->gpu, -1, -1);
	return device->handle ? NVML_SUCCESS : NVML_ERROR_MEMORY;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
	if (!device.handle || !id || device.handle->gi < 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	*id = (unsigned int)device.handle->gi;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
	if (!device.handle || !id || device.handle->gi < 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	*id = (unsigned int)device.handle->ci;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "max-mig-devices", "");
	if (r == NVML_SUCCESS)
		*count = (unsigned int)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index, nvmlDevice_t *migDevice)
{
	struct answer a;
	nvmlReturn_t r;
	int gi, ci;
	if (!device.handle || !migDevice || device.handle->gi >= 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "mig-device %d %d %d %u", DEV(device), index)) != NVML_SUCCESS)
		return r;
	gi = (int)next_i64(&a), ci = (int)next_i64(&a);
	migDevice->handle = device_handle(device.handle->gpu, gi, ci);
	return migDevice->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

static void read_gi_profile(struct answer *a, nvmlGpuInstanceProfileInfo_t *info)
{
	info->id = (unsigned int)next_u64(a);
	info->isP2pSupported = (unsigned int)next_u64(a);
	info->sliceCount = (unsigned int)next_u64(a);
	info->instanceCount = (unsigned int)next_u64(a);
	info->multiprocessorCount = (unsigned int)next_u64(a);
	info->copyEngineCount = (unsigned int)next_u64(a);
	info->decoderCount = (unsigned int)next_u64(a);
	info->encoderCount = (unsigned int)next_u64(a);
	info->jpegCount = (unsigned int)next_u64(a);
	info->ofaCount = (unsigned int)next_u64(a);
	info->memorySizeMB = next_u64(a);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfo(nvmlDevice_t device, unsigned int profile, nvmlGpuInstanceProfileInfo_t *info)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !info)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "gi-profile %d %d %d %u", DEV(device), profile)) == NVML_SUCCESS)
		read_gi_profile(&a, info);
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceProfileInfoV(nvmlDevice_t device, unsigned int profile, nvmlGpuInstanceProfileInfo_v2_t *info)
{
	struct answer a;
	nvmlGpuInstanceProfileInfo_t v1;
	nvmlReturn_t r;
	unsigned int version;
	if (!device.handle || !info)
		return NVML_ERROR_INVALID_ARGUMENT;
	version = info->version;
	if (version != nvmlGpuInstanceProfileInfo_v2 && version != nvmlGpuInstanceProfileInfo_v3)
		return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
	if ((r = call(&a, "gi-profile %d %d %d %u", DEV(device), profile)) != NVML_SUCCESS)
		return r;
	read_gi_profile(&a, &v1);
	info->id = v1.id;
	info->isP2pSupported = v1.isP2pSupported;
	info->sliceCount = v1.sliceCount;
	info->instanceCount = v1.instanceCount;
	info->multiprocessorCount = v1.multiprocessorCount;
	info->copyEngineCount = v1.copyEngineCount;
	info->decoderCount = v1.decoderCount;
	info->encoderCount = v1.encoderCount;
	info->jpegCount = v1.jpegCount;
	info->ofaCount = v1.ofaCount;
	info->memorySizeMB = v1.memorySizeMB;
	return next_str(&a, info->name, sizeof(info->name));
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstancePossiblePlacements_v2(nvmlDevice_t device, unsigned int profileId,
								  nvmlGpuInstancePlacement_t *placements, unsigned int *count)
{
	struct answer a;
	nvmlReturn_t r;
	unsigned int n, i;
	if (!device.handle || !count)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "gi-placements %d %d %d %u", DEV(device), profileId)) != NVML_SUCCESS)
		return r;
	n = (unsigned int)next_u64(&a);
	if (!placements) {
		*count = n;
		return NVML_SUCCESS;
	}
	if (*count < n) {
		*count = n;
		return NVML_ERROR_INSUFFICIENT_SIZE;
	}
	for (i = 0; i < n; i++) {
		placements[i].start = (unsigned int)next_u64(&a);
		placements[i].size = (unsigned int)next_u64(&a);
	}
	*count = n;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstancePossiblePlacements(nvmlDevice_t device, unsigned int profileId,
							       nvmlGpuInstancePlacement_t *placements, unsigned int *count)
{
	return nvmlDeviceGetGpuInstancePossiblePlacements_v2(device, profileId, placements, count);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceRemainingCapacity(nvmlDevice_t device, unsigned int profileId, unsigned int *count)
{
	unsigned long long v;
	nvmlReturn_t r = u64_call(device, &v, "gi-remaining", " %u", profileId);
	if (r == NVML_SUCCESS)
		*count = (unsigned int)v;
	return r;
}

EXPORT nvmlReturn_t nvmlDeviceCreateGpuInstanceWithPlacement(nvmlDevice_t device, unsigned int profileId,
							     const nvmlGpuInstancePlacement_t *placement, nvmlGpuInstance_t *gpuInstance)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !placement || !gpuInstance || device.handle->gi >= 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "create-gi %d %d %d %u %u %u", DEV(device), profileId, placement->start, placement->size)) != NVML_SUCCESS)
		return r;
	gpuInstance->handle = gi_handle(device.handle->gpu, (int)next_i64(&a));
	return gpuInstance->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

EXPORT nvmlReturn_t nvmlDeviceCreateGpuInstance(nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstance)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !gpuInstance || device.handle->gi >= 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "create-gi-anywhere %d %d %d %u", DEV(device), profileId)) != NVML_SUCCESS)
		return r;
	gpuInstance->handle = gi_handle(device.handle->gpu, (int)next_i64(&a));
	return gpuInstance->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstances(nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstances, unsigned int *count)
{
	struct answer a;
	nvmlReturn_t r;
	unsigned int n, i;
	if (!device.handle || !count || device.handle->gi >= 0)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "gpu-instances %d %d %d %u", DEV(device), profileId)) != NVML_SUCCESS)
		return r;
	n = (unsigned int)next_u64(&a);
	if (!gpuInstances) {
		*count = n;
		return NVML_SUCCESS;
	}
	if (*count < n) {
		*count = n;
		return NVML_ERROR_INSUFFICIENT_SIZE;
	}
	for (i = 0; i < n; i++)
		if (!(gpuInstances[i].handle = gi_handle(device.handle->gpu, (int)next_i64(&a))))
			return NVML_ERROR_UNKNOWN;
	*count = n;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceById(nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *gpuInstance)
{
	struct answer a;
	nvmlReturn_t r;
	if (!device.handle || !gpuInstance || device.handle->gi >= 0 || id >= MAX_INSTANCE_ID)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "gi-by-id %d %d %d %u", DEV(device), id)) != NVML_SUCCESS)
		return r;
	gpuInstance->handle = gi_handle(device.handle->gpu, (int)id);
	return gpuInstance->handle ? NVML_SUCCESS : NVML_ERROR_MEMORY;
}

#define GI(g) (g).handle->gpu, (g).handle->gi

EXPORT nvmlReturn_t nvmlGpuInstanceGetInfo(nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info)
{
	struct answer a;
	nvmlReturn_t r;
	if (!gpuInstance.handle || !info)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "gi-info %d %d", GI(gpuInstance))) != NVML_SUCCESS)
		return r;
	info->device.handle = device_handle(gpuInstance.handle->gpu, -1, -1);
	info->id = (unsigned int)gpuInstance.handle->gi;
	info->profileId = (unsigned int)next_u64(&a);
	info->placement.start = (unsigned int)next_u64(&a);
	info->placement.size = (unsigned int)next_u64(&a);
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpuInstanceDestroy(nvmlGpuInstance_t gpuInstance)
{
	struct answer a;
	if (!gpuInstance.handle)
		return NVML_ERROR_INVALID_ARGUMENT;
	return call(&a, "destroy-gi %d %d", GI(gpuInstance));
}

static void read_ci_profile(struct answer *a, nvmlComputeInstanceProfileInfo_t *info)
{
	info->id = (unsigned int)next_u64(a);
	info->sliceCount = (unsigned int)next_u64(a);
	info->instanceCount = (unsigned int)next_u64(a);
	info->multiprocessorCount = (unsigned int)next_u64(a);
	info->sharedCopyEngineCount = (unsigned int)next_u64(a);
	info->sharedDecoderCount = (unsigned int)next_u64(a);
	info->sharedEncoderCount = (unsigned int)next_u64(a);
	info->sharedJpegCount = (unsigned int)next_u64(a);
	info->sharedOfaCount = (unsigned int)next_u64(a);
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfo(nvmlGpuInstance_t gpuInstance, unsigned int profile,
								 unsigned int engProfile, nvmlComputeInstanceProfileInfo_t *info)
{
	struct answer a;
	nvmlReturn_t r;
	if (!gpuInstance.handle || !info)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "ci-profile %d %d %u %u", GI(gpuInstance), profile, engProfile)) == NVML_SUCCESS)
		read_ci_profile(&a, info);
	return r;
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceProfileInfoV(nvmlGpuInstance_t gpuInstance, unsigned int profile,
								  unsigned int engProfile, nvmlComputeInstanceProfileInfo_v2_t *info)
{
	struct answer a;
	nvmlComputeInstanceProfileInfo_t v1;
	nvmlReturn_t r;
	if (!gpuInstance.handle || !info)
		return NVML_ERROR_INVALID_ARGUMENT;
	if (info->version != nvmlComputeInstanceProfileInfo_v2 && info->version != nvmlComputeInstanceProfileInfo_v3)
		return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
	if ((r = call(&a, "ci-profile %d %d %u %u", GI(gpuInstance), profile, engProfile)) != NVML_SUCCESS)
		return r;
	read_ci_profile(&a, &v1);
	info->id = v1.id;
	info->sliceCount = v1.sliceCount;
	info->instanceCount = v1.instanceCount;
	info->multiprocessorCount = v1.multiprocessorCount;
	info->sharedCopyEngineCount = v1.sharedCopyEngineCount;
	info->sharedDecoderCount = v1.sharedDecoderCount;
	info->sharedEncoderCount = v1.sharedEncoderCount;
	info->sharedJpegCount = v1.sharedJpegCount;
	info->sharedOfaCount = v1.sharedOfaCount;
	return next_str(&a, info->name, sizeof(info->name));
}

EXPORT nvmlReturn_t nvmlGpuInstanceCreateComputeInstance(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
							 nvmlComputeInstance_t *computeInstance)
{
	struct answer a;
	nvmlReturn_t r;
	if (!gpuInstance.handle || !computeInstance)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "create-ci %d %d %u", GI(gpuInstance), profileId)) != NVML_SUCCESS)
		return r;
	computeInstance->handle = ci_handle(gpuInstance.handle->gpu, gpuInstance.handle->gi, (int)next_i64(&a));
	return computeInstance->handle ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstances(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
						       nvmlComputeInstance_t *computeInstances, unsigned int *count)
{
	struct answer a;
	nvmlReturn_t r;
	unsigned int n, i;
	if (!gpuInstance.handle || !count)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "compute-instances %d %d %u", GI(gpuInstance), profileId)) != NVML_SUCCESS)
		return r;
	n = (unsigned int)next_u64(&a);
	if (!computeInstances) {
		*count = n;
		return NVML_SUCCESS;
	}
	if (*count < n) {
		*count = n;
		return NVML_ERROR_INSUFFICIENT_SIZE;
	}
	for (i = 0; i < n; i++)
		if (!(computeInstances[i].handle = ci_handle(gpuInstance.handle->gpu, gpuInstance.handle->gi, (int)next_i64(&a))))
			return NVML_ERROR_UNKNOWN;
	*count = n;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlGpuInstanceGetComputeInstanceById(nvmlGpuInstance_t gpuInstance, unsigned int id,
							  nvmlComputeInstance_t *computeInstance)
{
	struct answer a;
	nvmlReturn_t r;
	if (!gpuInstance.handle || !computeInstance || id >= MAX_INSTANCE_ID)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "ci-by-id %d %d %u", GI(gpuInstance), id)) != NVML_SUCCESS)
		return r;
	computeInstance->handle = ci_handle(gpuInstance.handle->gpu, gpuInstance.handle->gi, (int)id);
	return computeInstance->handle ? NVML_SUCCESS : NVML_ERROR_MEMORY;
}

EXPORT nvmlReturn_t nvmlComputeInstanceGetInfo_v2(nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info)
{
	struct answer a;
	nvmlReturn_t r;
	struct nvmlComputeInstance_st *h = computeInstance.handle;
	if (!h || !info)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = call(&a, "ci-info %d %d %d", h->gpu, h->gi, h->ci)) != NVML_SUCCESS)
		return r;
	info->device.handle = device_handle(h->gpu, -1, -1);
	info->gpuInstance.handle = gi_handle(h->gpu, h->gi);
	info->id = (unsigned int)h->ci;
	info->profileId = (unsigned int)next_u64(&a);
	info->placement.start = (unsigned int)next_u64(&a);
	info->placement.size = (unsigned int)next_u64(&a);
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlComputeInstanceGetInfo(nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info)
{
	return nvmlComputeInstanceGetInfo_v2(computeInstance, info);
}

EXPORT nvmlReturn_t nvmlComputeInstanceDestroy(nvmlComputeInstance_t computeInstance)
{
	struct answer a;
	struct nvmlComputeInstance_st *h = computeInstance.handle;
	if (!h)
		return NVML_ERROR_INVALID_ARGUMENT;
	return call(&a, "destroy-ci %d %d %d", h->gpu, h->gi, h->ci);
}

/* ---- events ---- */

/* An event set is a connection of its own, on which the server keeps the
 * set: a wait blocks only that connection, and the set ends with it. */
static nvmlReturn_t set_call(struct nvmlEventSet_st *s, struct answer *a, const char *fmt, ...)
{
	char req[256];
	va_list ap;
	long ret;
	char *end;
	int n, ok;

	va_start(ap, fmt);
	n = vsnprintf(req, sizeof(req) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= (int)sizeof(req) - 1)
		return NVML_ERROR_INVALID_ARGUMENT;
	req[n++] = '\n';
	req[n] = '\0';
	pthread_mutex_lock(&s->mu);
	ok = s->fd >= 0 && exchange(s->fd, req, a->line, sizeof(a->line));
	pthread_mutex_unlock(&s->mu);
	if (!ok)
		return NVML_ERROR_UNKNOWN;
	ret = strtol(a->line, &end, 10);
	if (end == a->line)
		return NVML_ERROR_UNKNOWN;
	a->cur = end;
	return (nvmlReturn_t)ret;
}

EXPORT nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
	struct nvmlEventSet_st *s;
	struct answer a;
	nvmlReturn_t r;
	int fd;
	if (!set)
		return NVML_ERROR_INVALID_ARGUMENT;
	pthread_mutex_lock(&conn_mu);
	fd = init_count > 0 ? dial() : -2;
	pthread_mutex_unlock(&conn_mu);
	if (fd == -2)
		return NVML_ERROR_UNINITIALIZED;
	if (fd < 0)
		return NVML_ERROR_UNKNOWN;
	if (!(s = calloc(1, sizeof(*s)))) {
		close(fd);
		return NVML_ERROR_MEMORY;
	}
	s->fd = fd;
	pthread_mutex_init(&s->mu, NULL);
	if ((r = set_call(s, &a, "event-set-create")) != NVML_SUCCESS) {
		close(fd);
		pthread_mutex_destroy(&s->mu);
		free(s);
		return r;
	}
	set->handle = s;
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set)
{
	struct answer a;
	if (!device.handle || !set.handle)
		return NVML_ERROR_INVALID_ARGUMENT;
	return set_call(set.handle, &a, "event-register %d %d %d %llu", DEV(device), eventTypes);
}

EXPORT nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
	struct answer a;
	nvmlReturn_t r;
	int gpu;
	if (!set.handle || !data)
		return NVML_ERROR_INVALID_ARGUMENT;
	if ((r = set_call(set.handle, &a, "event-wait %u", timeoutms)) != NVML_SUCCESS)
		return r;
	gpu = (int)next_i64(&a);
	data->device.handle = device_handle(gpu, -1, -1);
	data->eventType = next_u64(&a);
	data->eventData = next_u64(&a);
	data->gpuInstanceId = (unsigned int)next_u64(&a);
	data->computeInstanceId = (unsigned int)next_u64(&a);
	return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms)
{
	return nvmlEventSetWait_v2(set, data, timeoutms);
}

EXPORT nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
	struct nvmlEventSet_st *s = set.handle;
	if (!s)
		return NVML_ERROR_INVALID_ARGUMENT;
	pthread_mutex_lock(&s->mu);
	if (s->fd >= 0)
		close(s->fd);
	s->fd = -1;
	pthread_mutex_unlock(&s->mu);
	/* Not freed: a wait of another thread may still hold the record. */
	return NVML_SUCCESS;
}
