"""cffi declarations for libnftables (build-time only).

`setup.py` hands `ffibuilder` to cffi, which writes hanok/netns/_nft_cffi.py
(out-of-line ABI mode: no C compiler, no pycparser when a command runs).
`nat.py` falls back to parsing CDEF in-line when running from a source tree
that was never built.

Only the handful of calls nat.py needs are declared: a context, one call that
runs a whole script as one kernel transaction, buffered output and errors, and
the output flags that select JSON listings.
"""
import cffi

CDEF = r"""
struct nft_ctx;
struct nft_ctx *nft_ctx_new(uint32_t flags);
void nft_ctx_free(struct nft_ctx *ctx);
int nft_run_cmd_from_buffer(struct nft_ctx *nft, const char *buf);
int nft_ctx_buffer_output(struct nft_ctx *ctx);
const char *nft_ctx_get_output_buffer(struct nft_ctx *ctx);
int nft_ctx_buffer_error(struct nft_ctx *ctx);
const char *nft_ctx_get_error_buffer(struct nft_ctx *ctx);
void nft_ctx_output_set_flags(struct nft_ctx *ctx, unsigned int flags);
"""

ffibuilder = cffi.FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("hanok.netns._nft_cffi", None)

if __name__ == "__main__":
    # For an editable checkout: write the generated module next to this file.
    import os.path

    ffibuilder.emit_python_code(os.path.join(os.path.dirname(__file__), "_nft_cffi.py"))
