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
            // Made the host's shutdown time while the app was built: it threw there (an abort, exit 134) and hid the rest.
            ["Dispatcher:ShutdownGraceSeconds"] = "NaN",
        });

        dispatcher.AssertRefusedAtStart("Hosting failed to start", "Dispatcher:MaxConcurrency", "Dispatcher:PortRequestTimeoutSeconds",
            "Dispatcher:ShutdownGraceSeconds must be between 0 and 300");
    }

    [Fact]
    public void Run_ConnectionStringIsAUrlWithAPassword_RefusedWithTheOtherErrorsAndThePasswordIsNotPrinted()
    {
        // The Dispatcher's workers take the connection when the host builds them, before its start-up checks: the client
        // connected first, and printed the URL (password and all) in six connection errors.
        using var dispatcher = ServiceProcess.StartDispatcher(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "redis://default:s3cret-pw@127.0.0.1:1",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Dispatcher:MaxConcurrency"] = "0",
        });

        dispatcher.AssertRefusedAtStart("Hosting failed to start", "ConnectionStrings:redis is a URL", "Dispatcher:MaxConcurrency");
        Assert.DoesNotContain("s3cret", dispatcher.Output, StringComparison.Ordinal);
    }

    [Fact]
    public void Run_OptionNotANumber_ExitsWithOneNamingTheKey()
    {
        // Read while the app is built (the host's shutdown time), before the host and its logging exist: an abort (exit 134).
        using var dispatcher = ServiceProcess.StartDispatcher(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Dispatcher:ShutdownGraceSeconds"] = "soon",
        });

        dispatcher.AssertRefusedAtStart("PortAzure.Dispatcher did not start: Failed to convert configuration value 'soon' at 'Dispatcher:ShutdownGraceSeconds'");
    }
}
