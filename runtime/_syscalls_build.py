"""cffi declarations for the kernel interfaces hanok calls (build-time only).

`setup.py` hands `ffibuilder` to cffi, which writes hanok/runtime/_syscalls_cffi.py
(out-of-line ABI mode: no C compiler, no pycparser when a command runs).
`syscalls.py` falls back to parsing CDEF in-line when running from a source
tree that was never built.

Only x86_64/aarch64 glibc layouts are declared; structs are spelled out in full
because ABI mode cannot ask a compiler for their layout.
"""
import cffi

CDEF = r"""
/* mounts */
int mount(const char *source, const char *target, const char *filesystemtype,
          unsigned long mountflags, const void *data);
int umount2(const char *target, int flags);

/* namespaces, hostnames, process attributes */
int unshare(int flags);
int setns(int fd, int nstype);
int sethostname(const char *name, size_t len);
int setdomainname(const char *name, size_t len);
int prctl(int option, unsigned long arg2, unsigned long arg3,
          unsigned long arg4, unsigned long arg5);
long syscall(long number, ...);

/* capabilities (linux/capability.h, version 3: two 32-bit words per set) */
struct hanok_cap_header { uint32_t version; int pid; };
struct hanok_cap_data { uint32_t effective; uint32_t permitted; uint32_t inheritable; };
int capset(struct hanok_cap_header *hdrp, const struct hanok_cap_data *datap);
int capget(struct hanok_cap_header *hdrp, struct hanok_cap_data *datap);

/* statfs, to check that /proc really is procfs */
struct hanok_statfs {
    long f_type; long f_bsize;
    unsigned long f_blocks; unsigned long f_bfree; unsigned long f_bavail;
    unsigned long f_files; unsigned long f_ffree;
    int f_fsid[2];
    long f_namelen; long f_frsize; long f_flags; long f_spare[4];
};
int fstatfs(int fd, struct hanok_statfs *buf);
int statfs(const char *path, struct hanok_statfs *buf);

/* libseccomp (seccomp.h), dlopen'ed only when a config asks for seccomp */
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
int seccomp_arch_remove(scmp_filter_ctx ctx, uint32_t arch_token);
uint32_t seccomp_arch_resolve_name(const char *arch_name);
uint32_t seccomp_arch_native(void);
int seccomp_syscall_resolve_name(const char *name);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_load(const scmp_filter_ctx ctx);
int seccomp_export_bpf(const scmp_filter_ctx ctx, int fd);
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("hanok.runtime._syscalls_cffi", None)

if __name__ == "__main__":
    # For an editable checkout: write the generated module next to this file.
    import os.path

    ffibuilder.emit_python_code(os.path.join(os.path.dirname(__file__), "_syscalls_cffi.py"))
