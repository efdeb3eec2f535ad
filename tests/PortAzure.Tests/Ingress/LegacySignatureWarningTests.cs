using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Ingress;

public class LegacySignatureWarningTests
{
    private const string WarningId = "[1007]";

    [Theory]
    [InlineData(0, "every target")]
    [InlineData(1, "1 of the 2 targets")]
    public async Task Start_LegacyOnWithTargetsSigningWithPortsSecret_WarnsOnceNamingThem(int ownSecrets, string which)
    {
        // Each POST to such a target carries the body's HMAC-SHA1 under Port's secret: a legacy call this Ingress accepts.
        await using var host = await StartAsync(legacy: true, targets: ownSecrets == 0 ? 0 : 2, ownSecrets);

        var warning = Assert.Single(host.Logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
        Assert.StartsWith("Warning", warning, StringComparison.Ordinal);
        Assert.Contains(which, warning, StringComparison.Ordinal);
        Assert.DoesNotContain("target-secret", warning, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false, 0, 0)]
    [InlineData(true, 2, 2)]
    public async Task Start_LegacyOffOrEveryTargetWithItsOwnSecret_DoesNotWarn(bool legacy, int targets, int ownSecrets)
    {
        await using var host = await StartAsync(legacy, targets, ownSecrets);

        Assert.DoesNotContain(host.Logs.Lines, l => l.Contains(WarningId, StringComparison.Ordinal));
    }

    private static Task<TestHost> StartAsync(bool legacy, int targets, int ownSecrets)
    {
        var config = new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false,connectTimeout=200",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Ingress:AllowLegacySha1Signature"] = legacy ? "true" : "false",
        };
        for (var i = 0; i < targets; i++)
        {
            config[$"AzureDevOps:Targets:{i}:Org"] = TestRuns.Org;
            config[$"AzureDevOps:Targets:{i}:Webhook"] = $"hook{i}";
            if (i < ownSecrets)
            {
                config[$"AzureDevOps:Targets:{i}:Secret"] = $"target-secret-{i}";
            }
        }
        return TestHost.StartIngressAsync(config);
    }
}
