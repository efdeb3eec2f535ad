namespace PortAzure.AppHost;

internal static class ManifestExtensions
{
    /// <summary>
    /// Writes the project's manifest entry as Aspire does (type, path, args, env, bindings) and adds
    /// <c>"replicas": "{parameter.value}"</c>.
    /// </summary>
    public static IResourceBuilder<ProjectResource> WithReplicaCountParameter(this IResourceBuilder<ProjectResource> project, IResourceBuilder<ParameterResource> replicas) =>
        project.WithManifestPublishingCallback(async context =>
        {
            var resource = project.Resource;
            context.Writer.WriteString("type", "project.v0");
            context.Writer.WriteString("path", context.GetManifestRelativePath(resource.GetProjectMetadata().ProjectPath));
            await context.WriteCommandLineArgumentsAsync(resource);
            await context.WriteEnvironmentVariablesAsync(resource);
            context.WriteBindings(resource);
            context.Writer.WriteString("replicas", replicas.Resource.ValueExpression);
        });
}
