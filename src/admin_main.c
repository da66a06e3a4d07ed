/*
 * postern-admin: the operator tool's entry point; everything is in
 * admin.c so that "postern admin ..." runs the same code.
 */
#include "admin.h"

int main(int argc, char **argv)
{
    return admin_run(argc, argv);
}
