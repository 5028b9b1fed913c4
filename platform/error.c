/* error.c - names and messages for -errno and the project error table. */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

struct err_row {
    const char *name;
    const char *msg;
};

static const struct err_row project_errors[] = {
#define TDG_X_ROW(name, msg) {#name, msg},
    TDG_ERROR_TABLE(TDG_X_ROW)
#undef TDG_X_ROW
};

#define N_PROJECT (sizeof(project_errors) / sizeof(project_errors[0]))

static const struct err_row *project_row(int err)
{
    if (err > TDG_ERR_BASE && err < TDG_ERR_LAST_) {
        return &project_errors[err - TDG_ERR_BASE - 1];
    }
    return NULL;
}

const char *tdg_strerror(int err)
{
    const struct err_row *row = project_row(err);
    if (row) {
        return row->msg;
    }
    if (err == 0) {
        return "success";
    }
    if (err < 0 && err > TDG_ERR_BASE) {
        /* strerror is not thread-safe in theory, but glibc returns static
         * strings for known codes; unknown codes fall through below. */
        const char *s = strerror(-err);
        if (s) {
            return s;
        }
    }
    return "unknown error";
}

const char *tdg_errname(int err)
{
    const struct err_row *row = project_row(err);
    if (row) {
        return row->name;
    }
    switch (-err) {
    case 0: return "OK";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case ENOSPC: return "ENOSPC";
    case ERANGE: return "ERANGE";
    case EPIPE: return "EPIPE";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ECONNRESET: return "ECONNRESET";
    case EPROTO: return "EPROTO";
    case EMSGSIZE: return "EMSGSIZE";
    case ENOTCONN: return "ENOTCONN";
    case ECANCELED: return "ECANCELED";
    case EFBIG: return "EFBIG";
    case EROFS: return "EROFS";
    case EDQUOT: return "EDQUOT";
    default: return "E?";
    }
}
