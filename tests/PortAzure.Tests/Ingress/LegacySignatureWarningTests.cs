using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class LegacySignatureWarningTests
{
    private const string WarningId = "[1007]";

    [Fact]
    public async Task Start_LegacyOn_WarnsOnceThatTargetsNeedTheirOwnSecretsOnTheDispatcher()
    {
        // Each POST to a target signed with Port's secret carries a legacy signature this Ingress accepts. The targets'
        // secrets are the Dispatcher's settings (docs/deploy.md), so the Ingress says so whenever legacy is on.
        await using var host = await StartAsync(legacy: true);

        var warning = Assert.Single(host.Logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
        Assert.StartsWith("Warning", warning, StringComparison.Ordinal);
        Assert.Contains("AzureDevOps__Targets__N__Secret", warning, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_LegacyOff_DoesNotWarn()
    {
        await using var host = await StartAsync(legacy: false);

        Assert.DoesNotContain(host.Logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
    }

    private static Task<TestHost> StartAsync(bool legacy) => TestHost.StartIngressAsync(new Dictionary<string, string?>
    {
        ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false,connectTimeout=200",
        ["Port:ClientSecret"] = TestRuns.Secret,
        ["Ingress:AllowLegacySha1Signature"] = legacy ? "true" : "false",
    });
}
