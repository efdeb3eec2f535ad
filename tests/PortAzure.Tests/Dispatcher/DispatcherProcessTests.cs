using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The Dispatcher run on its own, as a deployment runs it: the built dll and environment variables.</summary>
[Collection(HeavyTests.Name)]
public class DispatcherProcessTests
{
    [Fact]
    public void Run_OptionsRefusedByValidation_ExitsWithOneNamingEveryKeyOnce()
    {
        // app.Run() let the validation exception escape: .NET printed it again as unhandled and aborted (exit 134).
        using var dispatcher = ServiceProcess.StartDispatcher(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Dispatcher:MaxConcurrency"] = "0",
            ["Dispatcher:PortRequestTimeoutSeconds"] = "0",
        });

        dispatcher.AssertRefusedAtStart("Dispatcher:MaxConcurrency", "Dispatcher:PortRequestTimeoutSeconds");
    }
}
