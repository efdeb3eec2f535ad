using System.Runtime.CompilerServices;

namespace PortAzure.Tests.Infrastructure;

internal static class TestProcessSetup
{
    /// <summary>
    /// This one process hosts many Ingresses, Dispatchers and emulators at once on 2 cores. Without
    /// a head start the thread pool grows slowly and a 1.5 s emulator delay can stretch past a
    /// request timeout, turning a test about something else into a (documented) retry.
    /// </summary>
    [ModuleInitializer]
    internal static void RaiseThreadPoolMinimum() => ThreadPool.SetMinThreads(64, 64);
}
