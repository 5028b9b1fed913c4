/*
 * cli.h - tidings-agent's client subcommands, talking to a running agent
 * over its unix socket (agent/socket.h).
 *
 *   tidings-agent send --title T --body B [--to ..] [...]   queue one notification
 *   tidings-agent status [--json]                          the agent's state and counters
 *   tidings-agent status --id ID [--json]                  a local notification's fate
 *
 * Exit codes of send (status uses 0, 2 and 4 the same way, and 3 for an
 * id with no local delivery row):
 *   0  accepted (also when it was a duplicate: accepted once); the id is printed
 *   2  invalid input: a bad option, or the agent's reason code and field
 *   3  not accepted: outbox full, or a storage error in the agent
 *   4  agent not reachable (the message names the socket path), busy, or no
 *      reply in time; resending with the same --id is safe
 *   1  anything else (e.g. an unreadable reply)
 *
 * These run in their own short-lived process: blocking I/O with a deadline
 * (--timeout) is fine here, unlike in the agent's loop.
 */
#ifndef TIDINGS_CLI_H
#define TIDINGS_CLI_H

#include <stdbool.h>

enum cli_exit {
    CLI_OK = 0,
    CLI_FAIL = 1,
    CLI_INVALID = 2,
    CLI_REFUSED = 3,
    CLI_UNREACHABLE = 4,
};

/* Is name a subcommand ("send", "status")? */
bool cli_is_command(const char *name);

/* Run the subcommand argv[0] with its options argv[1..argc-1]. Writes
 * results to stdout and messages to stderr; returns the exit code. */
int cli_run(int argc, char **argv);

#endif
