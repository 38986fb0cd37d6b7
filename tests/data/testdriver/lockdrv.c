/* A driver-like test image for leakhunt's symbol tests: DriverEntry, a global lock, file statics and a
   static function, in the first of two source files. Built by build.py with clang and lld-link. */

typedef struct _LD_STATE {
    volatile long Lock;
    long Count;
    void *Owner;
    unsigned char Flags[16];
} LD_STATE;

LD_STATE g_StateLock;             /* a driver global: the lock */
long g_Generation = 1;            /* an initialised global */
static long s_OpenCount;          /* a file static */

long LdLockUserBuffer(void *Buffer, unsigned long Length);
void LdUnlock(void);

static long LdValidate(unsigned long Length)
{
    if (Length == 0) {
        return -1;
    }
    if (Length > 0x10000) {
        return -2;
    }
    return 0;
}

long DriverEntry(void *DriverObject, void *RegistryPath)
{
    long status;

    s_OpenCount = s_OpenCount + 1;
    g_StateLock.Owner = DriverObject;
    status = LdValidate((unsigned long)(unsigned long long)RegistryPath);
    if (status != 0) {
        return status;
    }
    status = LdLockUserBuffer(RegistryPath, 0x200);
    LdUnlock();
    g_Generation = g_Generation + 1;
    return status;
}
