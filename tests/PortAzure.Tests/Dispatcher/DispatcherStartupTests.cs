using PortAzure.Redis;
using PortAzure.Tests.Infrastructure;

namespace PortAzure.Tests.Dispatcher;

/// <summary>The Dispatcher's start-up: options refused all at once, and the risky ones it allows with a Warning.</summary>
public class DispatcherStartupTests
{
    [Fact]
    public async Task Start_WithoutAnySecret_FailsNamingTheKey()
    {
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Dispatcher:MaxConcurrency"] = "0",
            ["Admin:ApiKey"] = "short-key",
        }));
        Assert.Contains("Port:ClientSecret", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Dispatcher:MaxConcurrency", error.ToString(), StringComparison.Ordinal);
        Assert.Contains("Admin:ApiKey must be at least 16 characters", error.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_PortSecretWithATrailingNewline_FailsNamingTheKey()
    {
        // It would sign every POST to Azure with another key (each refused 401 there) and fail every Port login.
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret + "\n",
        }));
        Assert.Contains("Port:ClientSecret begins or ends with white space", error.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Start_OptionsPastTheirBounds_FailNamingEachKey()
    {
        // Each passed once and then threw while running: the retention after Azure's 2xx (the run was posted again),
        // the retry age after every transient answer, the signature before every POST; the key never matched a header.
        var error = (await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            // No Port:ClientSecret either: named beside the AzureDevOps section's own error, not hidden behind it.
            ["Dispatcher:DeliveredRetentionHours"] = "2147483647",
            ["Dispatcher:BacklogDegradedSeconds"] = "Infinity",
            ["Dispatcher:Retry:MaxAgeHours"] = "1e9",
            ["Dispatcher:Retry:MaxDelaySeconds"] = "Infinity",
            ["Dispatcher:TargetHealth:ProbeIntervalSeconds"] = "1e300",
            ["Dispatcher:PortRequestTimeoutSeconds"] = "0",
            // Past the reports held at once: the calls would never all be used.
            ["Dispatcher:PortMaxConcurrentCalls"] = "257",
            ["AzureDevOps:SignatureFormat"] = "5",
            ["Port:ApiBaseUrl"] = "https://proxy.example/port/",
            ["Admin:ApiKey"] = "a-long-admin-key-read-from-a-file\n",
        }))).ToString();

        foreach (var key in new[]
        {
            "Dispatcher:DeliveredRetentionHours", "Dispatcher:BacklogDegradedSeconds", "Dispatcher:Retry:MaxAgeHours",
            "Dispatcher:Retry:MaxDelaySeconds", "Dispatcher:TargetHealth:ProbeIntervalSeconds", "Dispatcher:PortRequestTimeoutSeconds", "AzureDevOps:SignatureFormat",
            "Dispatcher:PortMaxConcurrentCalls must be between 1 and 256", "Admin:ApiKey must be visible ASCII", "Port:ApiBaseUrl must be the API's root", "Port:ClientSecret is required",
        })
        {
            Assert.True(error.Contains(key, StringComparison.Ordinal), error);
        }
    }

    [Theory]
    [InlineData("https://api.port.io")]
    [InlineData("https://api.port.io/v1")]
    [InlineData("https://api.us.port.io/v1/")]
    public async Task Start_PortApiBaseUrlAtTheRootOrV1_Starts(string url)
    {
        await using var dispatcher = await TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Port:ApiBaseUrl"] = url,
        });

        Assert.NotNull(dispatcher.BaseAddress);
    }

    [Theory]
    [InlineData("ftp://api.port.io")]
    [InlineData("file:///v1")]
    public async Task Start_PortApiBaseUrlNotHttp_FailsNamingTheKey(string url)
    {
        // It started, and every report failed at its first call until it was given up.
        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
            ["Port:ClientId"] = "relay-client",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Port:ApiBaseUrl"] = url,
        }));

        Assert.Contains("Port:ApiBaseUrl must be an absolute http or https URL", error.ToString(), StringComparison.Ordinal);
    }

    private static Dictionary<string, string?> EveryTargetWithItsOwnSecret() => new()
    {
        ["ConnectionStrings:redis"] = "127.0.0.1:1,abortConnect=false",
        ["AzureDevOps:Targets:0:Org"] = "contoso",
        ["AzureDevOps:Targets:0:Webhook"] = "deploy",
        ["AzureDevOps:Targets:0:Secret"] = "target-secret",
    };

    [Fact]
    public async Task Start_EveryTargetWithItsOwnSecret_StartsWithoutPortsSecret()
    {
        await using var dispatcher = await TestHost.StartDispatcherAsync(EveryTargetWithItsOwnSecret());

        Assert.NotNull(dispatcher.BaseAddress);
    }

    [Fact]
    public async Task Start_PortClientIdWithoutItsSecret_FailsNamingTheKey()
    {
        // Legal without Port's secret (above), but the client id alone turned reporting off without a word.
        var config = EveryTargetWithItsOwnSecret();
        config["Port:ClientId"] = "relay-client";

        var error = await Assert.ThrowsAnyAsync<Exception>(() => TestHost.StartDispatcherAsync(config));

        Assert.Contains("Port:ClientId is set without Port:ClientSecret", error.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("http://port.invalid/", true)]
    [InlineData("https://port.invalid/", false)]
    [InlineData("http://127.0.0.1:1/", false)]
    public async Task Start_PortApiOverPlainHttp_WarnsUnlessLoopback(string url, bool warned)
    {
        await using var lease = await SharedRedis.LeaseAsync();
        await using var dispatcher = await TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Port:ClientId"] = "relay-client",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Port:ApiBaseUrl"] = url,
            // A short reclaim time logs 2215 right after the http check: once it is there, so is any 2216.
            ["Dispatcher:PortReportReclaimSeconds"] = "60",
        });

        await Eventually.HoldsAsync(() => Task.FromResult(dispatcher.Logs.Lines.Any(l => l.Contains("[2215]", StringComparison.Ordinal))),
            TimeSpan.FromSeconds(10), "the reporter's start-up checks");
        Assert.Equal(warned, dispatcher.Logs.Lines.Any(l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains("[2216]", StringComparison.Ordinal)));
    }

    [Theory]
    [InlineData("15", null)]
    [InlineData("60", "7.7 min")]
    public async Task Start_PortReportReclaimOf7Min_WarnsOnlyWhenThePortTimeoutMakesTouchesFurtherApart(string portTimeout, string? warnedMinutes)
    {
        // 7 min covers the longest time between two touches of a report with 15-s calls to Port (6 min), not with 60-s ones
        // (5 min of Retry-After, 10 s queued, a token call and the log call, a margin).
        await using var lease = await SharedRedis.LeaseAsync();
        await using var redis = await StackExchange.Redis.ConnectionMultiplexer.ConnectAsync(lease.ConnectionString);
        await using var dispatcher = await TestHost.StartDispatcherAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Port:ClientId"] = "relay-client",
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Dispatcher:PortReportReclaimSeconds"] = "420",
            ["Dispatcher:PortRequestTimeoutSeconds"] = portTimeout,
        });

        // The reporter checks the reclaim time at its start, before it creates its consumer group: once the group is there,
        // any 2215 is logged (the sink is synchronous).
        await Eventually.HoldsAsync(async () =>
        {
            try
            {
                return (await redis.GetDatabase().StreamGroupInfoAsync(RedisKeys.PortReports)).Any(g => g.Name == RedisKeys.PortReportersGroup);
            }
            catch (StackExchange.Redis.RedisServerException)
            {
                return false;
            }
        }, TimeSpan.FromSeconds(30), "the reporter's start-up");
        var warning = dispatcher.Logs.Lines.SingleOrDefault(l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains("[2215]", StringComparison.Ordinal));
        if (warnedMinutes is null)
        {
            Assert.Null(warning);
        }
        else
        {
            Assert.NotNull(warning);
            Assert.Contains(warnedMinutes, warning, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Start_RequestTimeoutBeyondShutdownGrace_Warns()
    {
        await using var lease = await SharedRedis.LeaseAsync();
        var config = new Dictionary<string, string?>
        {
            ["ConnectionStrings:redis"] = lease.ConnectionString,
            ["Port:ClientSecret"] = TestRuns.Secret,
            ["Dispatcher:RequestTimeoutSeconds"] = "30",
        };
        await using (var risky = await TestHost.StartDispatcherAsync(config))
        {
            await Eventually.HoldsAsync(() => Task.FromResult(risky.Logs.Lines.Any(l => l.StartsWith("Warning", StringComparison.Ordinal) && l.Contains("[2110]", StringComparison.Ordinal))),
                TimeSpan.FromSeconds(10), "a Warning 2110 at start");
        }

        config["Dispatcher:RequestTimeoutSeconds"] = "15";
        await using var safe = await TestHost.StartDispatcherAsync(config);
        // 2110 comes before 2101: once the worker says it started, no 2110 means none.
        await Eventually.HoldsAsync(() => Task.FromResult(safe.Logs.Lines.Any(l => l.Contains("[2101]", StringComparison.Ordinal))), TimeSpan.FromSeconds(10), "the worker started");
        Assert.DoesNotContain(safe.Logs.Lines, l => l.Contains("[2110]", StringComparison.Ordinal));
    }
}
