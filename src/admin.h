/*
 * admin: the operator tool (postern-admin, or "postern admin"). Talks to
 * Redis directly through store.c and queue.c on its own event loop; never
 * needs the daemon to be stopped.
 */
#ifndef POSTERN_ADMIN_H
#define POSTERN_ADMIN_H

/*
 * argv[0] is the program name ("postern-admin" or "admin"), then
 * "-c FILE" and a command. Returns the process exit code: 0 done, 1 error
 * (message on stderr), 2 usage.
 */
int admin_run(int argc, char **argv);

#endif
