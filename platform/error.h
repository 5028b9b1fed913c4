/*
 * error.h - one error scheme for all of Tidings.
 *
 * Every function that can fail returns an int: 0 is success, a negative value
 * is an error. System errors are -errno (-ENOMEM, -EIO, ...). Project errors
 * come from the table below; their values lie below TDG_ERR_BASE so they never
 * collide with an errno. tdg_strerror() and tdg_errname() understand both.
 * SQLite, MQTT, TLS and HTTP client codes are mapped at the module edge.
 */
#ifndef TIDINGS_ERROR_H
#define TIDINGS_ERROR_H

#define TDG_ERR_BASE (-10000)

/* X(name, message) - append only; values are part of logs and exit codes. */
#define TDG_ERROR_TABLE(X)                                                   \
    X(TDG_EINVAL_INPUT, "invalid input")                                     \
    X(TDG_ETOOBIG, "input over size limit")                                  \
    X(TDG_ECONFIG, "bad configuration")                                      \
    X(TDG_EDB, "database error")                                             \
    X(TDG_EDB_CORRUPT, "database is corrupt or not a database")              \
    X(TDG_EDB_FULL, "database or disk is full")                              \
    X(TDG_EMQTT, "MQTT error")                                               \
    X(TDG_EHTTP, "HTTP error")                                               \
    X(TDG_ECRYPTO, "cryptographic operation failed")                         \
    X(TDG_EFULL, "queue over budget")                                        \
    X(TDG_ENOTFOUND, "not found")                                            \
    X(TDG_EDUPLICATE, "duplicate")                                           \
    X(TDG_ECLOSED, "closed")                                                 \
    X(TDG_ESCHEMA, "database schema is newer than this program")             \
    X(TDG_EDEVICE_LIMIT, "user already has the maximum number of devices (5)")

enum tdg_error {
    TDG_ERR_FIRST_ = TDG_ERR_BASE,
#define TDG_X_ENUM(name, msg) name,
    TDG_ERROR_TABLE(TDG_X_ENUM)
#undef TDG_X_ENUM
    TDG_ERR_LAST_
};

/* Human-readable message for err (negative errno or project code). Never NULL. */
const char *tdg_strerror(int err);

/* Symbolic name ("ENOMEM", "TDG_EDB") for err. Never NULL. */
const char *tdg_errname(int err);

#endif
