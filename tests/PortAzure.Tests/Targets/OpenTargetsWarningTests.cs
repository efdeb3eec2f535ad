using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Hosting.Internal;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using PortAzure.Targets;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Targets;

public class OpenTargetsWarningTests
{
    private const string WarningId = "[3002]";

    [Theory]
    [InlineData("PortAzure.Ingress")]
    [InlineData("PortAzure.Dispatcher")]
    public async Task Start_NoTargetsOutsideDevelopment_WarnsOnce(string service)
    {
        await using var host = await StartAsync(service, targets: false);

        var warning = Assert.Single(host.Logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
        Assert.StartsWith("Warning", warning, StringComparison.Ordinal);
        Assert.Contains("AzureDevOps:Targets is empty", warning, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("PortAzure.Ingress")]
    [InlineData("PortAzure.Dispatcher")]
    public async Task Start_WithTargets_DoesNotWarn(string service)
    {
        await using var host = await StartAsync(service, targets: true);

        Assert.DoesNotContain(host.Logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
    }

    [Fact]
    public async Task StartAsync_NoTargetsInDevelopment_DoesNotWarn()
    {
        // The local AppHost runs with no targets against the emulator: a warning at every `dotnet run` would be noise.
        using var logs = new LogSink();
        using var factory = LoggerFactory.Create(b => b.SetMinimumLevel(LogLevel.Debug).AddProvider(logs));
        var warning = new OpenTargetsWarning(Options.Create(new AzureDevOpsOptions()),
            new HostingEnvironment { EnvironmentName = Environments.Development }, factory.CreateLogger<OpenTargetsWarning>());

        await warning.StartAsync(CancellationToken.None);

        Assert.DoesNotContain(logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
    }

    private static Task<TestHost> StartAsync(string service, bool targets)
    {
        var config = new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false,connectTimeout=200",
            ["Port:ClientSecret"] = TestRuns.Secret,
        };
        if (targets)
        {
            config["AzureDevOps:Targets:0:Org"] = TestRuns.Org;
            config["AzureDevOps:Targets:0:Webhook"] = TestRuns.Webhook;
        }
        return service == "PortAzure.Ingress" ? TestHost.StartIngressAsync(config) : TestHost.StartDispatcherAsync(config);
    }
}
