/* The second source file of the test driver: the locking code, with a function-local static. */

typedef struct _LD_STATE {
    volatile long Lock;
    long Count;
    void *Owner;
    unsigned char Flags[16];
} LD_STATE;

extern LD_STATE g_StateLock;

static unsigned char s_Scratch[64];   /* a file static array */

long LdLockUserBuffer(void *Buffer, unsigned long Length)
{
    unsigned long index;
    unsigned char *bytes = (unsigned char *)Buffer;
    long sum = 0;

    g_StateLock.Lock = 1;
    g_StateLock.Count = g_StateLock.Count + 1;
    for (index = 0; index < Length && index < sizeof(s_Scratch); index++) {
        s_Scratch[index] = bytes[index];
        sum = sum + s_Scratch[index];
    }
    g_StateLock.Flags[Length & 15] = (unsigned char)sum;
    return sum;
}

void LdUnlock(void)
{
    static long s_Unlocks;   /* a function-local static */

    s_Unlocks = s_Unlocks + 1;
    g_StateLock.Count = g_StateLock.Count - 1;
    g_StateLock.Lock = 0;
}
